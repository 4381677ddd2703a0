"""Pure rendering of what the CLI prints: markup never read from data, an agent's load errors in its row."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console

from station_runtime.cli import render
from station_runtime.contract.messages import AgentDefinition, StationRecord, utcnow
from station_runtime.contract.specs import AgentSpec, ModelSpec


def _text(renderable: object) -> str:
    console = Console(width=300, record=True, no_color=True)
    console.print(renderable)
    return console.export_text()


def _station(sid: str, **kw: object) -> StationRecord:
    now = utcnow()
    fields: dict[str, object] = {"org": "o", "station_id": sid, "capacity": 1, "heartbeat_interval_s": 1.0,
                                 "started_at": now, "last_heartbeat": now, **kw}
    return StationRecord(**fields)  # type: ignore[arg-type]


def test_an_agent_no_station_loads_shows_why() -> None:
    agent = AgentDefinition(org="o", name="broken", spec=AgentSpec(model=ModelSpec(provider="python",
                                                                                   function="nope:run")))
    ok = AgentDefinition(org="o", name="fine", spec=AgentSpec(model=ModelSpec(provider="echo")))
    stations = [_station("s1", agents=["fine"], agent_errors={"broken": "cannot import module 'nope'"}),
                _station("old", agent_errors={"broken": "stale"}, last_heartbeat=utcnow() - timedelta(seconds=60))]
    text = _text(render.agents_table([agent, ok], stations, wide=True))
    broken = next(line for line in text.splitlines() if line.strip().startswith("broken"))
    assert "False" in broken and "s1: cannot import module 'nope'" in broken and "stale" not in broken
    fine = next(line for line in text.splitlines() if line.strip().startswith("fine"))
    assert "True" in fine and "s1" in fine


def test_cells_are_text_never_markup() -> None:
    stations = [_station("s1", labels={"pattern": "[a-z]+"})]
    text = _text(render.stations_table(stations, wide=True))
    assert "pattern=[a-z]+" in text


def test_a_finished_runs_detail_shows_no_stale_progress_message_a_failed_one_does() -> None:
    from station_runtime.contract.messages import WorkPhase, WorkRecord
    from station_runtime.contract.specs import WorkItemSpec

    now = utcnow()
    base = WorkRecord(org="o", work_id="w1", spec=WorkItemSpec(agent="a"), phase=WorkPhase.SUCCEEDED,
                      created_at=now, updated_at=now, progress_percent=100.0, progress_message="turn 1",
                      traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    done = _text(render.work_detail(base, "ok"))
    assert "100%" in done and "turn 1" not in done and "0af7651916cd43dd8448eb211c80319c" in done
    failed = _text(render.work_detail(base.model_copy(update={"phase": WorkPhase.FAILED}), None))
    assert "turn 1" in failed

"""Durable agent runs: every turn and tool call is journalled before the loop acts on it, and a new attempt
resumes the run where the journal ends, on whichever station wins it. Side effects are counted in a file the
tool appends to; model requests are counted by the model server, by the turn they ask for."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import ErrorCode, JournalKind, WorkPhase, WorkRecord, utcnow
from station_runtime.modelsim import ModelSim, Step, ToolCallStep
from station_runtime.work import phases
from station_runtime.work.controller import WorkController
from tests.support.agent_tools import EFFECTS_ENV
from tests.support.agents_llm import llm_agent, script
from tests.support.cli import lattice
from tests.support.lattice import StationProcess, running_station
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)
EFFECT = "tests.support.agent_tools:effect"


def effects(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def requests_by_turn(sim: ModelSim, script_name: str) -> Counter[int]:
    """How many requests the model server got for each turn of a script's conversation (turn k: a request that
    carries k - 1 answers of the model)."""
    turns: Counter[int] = Counter()
    for request in sim.requests:
        if request.body.get("model") == script_name:
            turns[1 + sum(1 for m in request.body.get("messages", []) if m.get("role") == "assistant")] += 1
    return turns


async def _lines(path: Path, count: int) -> bool:
    return len(effects(path)) >= count


async def _result_of_call(client: LatticeClient, work_id: str, index: int) -> bool:
    return any(e.kind == JournalKind.RESULT and e.call_index == index for e in await client.journal(work_id))


async def _call_started(client: LatticeClient, work_id: str, index: int) -> bool:
    """Whether the run's ``index``-th call started (by the journal: its turn says so, or a call entry)."""
    entries = await client.journal(work_id)
    seen = 0
    for e in entries:
        if e.kind == JournalKind.TURN:
            for call in e.tool_calls:
                seen += 1
                if seen == index and call.id in e.started:
                    return True
        elif e.kind == JournalKind.CALL and e.call_index == index:
            return True
    return False


@pytest.mark.fault
async def test_a_station_killed_between_tool_calls_two_and_three_resumes_elsewhere_without_repeating(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, tmp_path: Path) -> None:
    # Four turns, one side effect each, then the answer. The third turn streams slowly: the station is SIGKILLed
    # while it streams, after calls 1 and 2 are journalled. The run resumes on another station: calls 1 and 2 do
    # not run again, turns 1 and 2 are not sent again; turn 3 (unfinished) is asked again, then 3, 4, the answer.
    work_id = "durable-four"
    steps = [Step(tool_calls=(ToolCallStep("effect", {"n": n}, id=f"call_{n}"),),
                  text=" ".join(["pondering"] * 12) if n == 3 else "") for n in (1, 2, 3, 4)]
    script(sim, "four-effects", *steps, "all four done", tokens_per_s=4)
    await client.put_agent(llm_agent(sim, "openai", "four-effects", "effector", tools=[{"function": EFFECT}]))
    ledger = tmp_path / "effects.txt"
    env = {"TEST_MODEL_KEY": "sk-test-0123456789abcdef", EFFECTS_ENV: str(ledger)}
    doomed = StationProcess(nats_url, org, "s-doomed", tmp_path, env=env).start()
    spare: StationProcess | None = None
    try:
        async with WorkController(await client.org_work(), interval_s=0.2):
            await client.wait_for_stations(1, agent="effector", timeout_s=30)
            await client.submit(WorkItemSpec(agent="effector", input="do four things", max_retries=2),
                                work_id=work_id)
            await eventually(lambda: _result_of_call(client, work_id, 2), timeout_s=30,
                             what="call 2 journalled")
            assert not await _call_started(client, work_id, 3)  # the kill comes while turn 3 streams
            doomed.signal(signal.SIGKILL)
            await doomed.wait(10)
            spare = StationProcess(nats_url, org, "s-spare", tmp_path, env=env).start()
            done = await client.wait_work(work_id, timeout_s=90)
        assert done.phase == WorkPhase.SUCCEEDED, done.reason
        assert done.result == "all four done" and done.attempt == 2 and done.station_id == "s-spare"
        assert effects(ledger) == [f"{n} {work_id}/{n}" for n in (1, 2, 3, 4)]  # each once, keys stable
        assert requests_by_turn(sim, "four-effects") == Counter({1: 1, 2: 1, 3: 2, 4: 1, 5: 1})
        assert done.usage is not None and done.usage.tool_calls == 4 and done.usage.model_calls == 5
        journal = await client.journal(work_id)
        assert [e.n for e in journal] == list(range(1, len(journal) + 1))
        takeover = [e for e in journal if e.kind == JournalKind.ATTEMPT]
        assert [(e.attempt, e.station_id) for e in takeover] == [(2, "s-spare")]
        assert [(e.kind, e.attempt) for e in journal[:takeover[0].n]] == [
            (JournalKind.TURN, 1), (JournalKind.RESULT, 1), (JournalKind.TURN, 1), (JournalKind.RESULT, 1),
            (JournalKind.ATTEMPT, 2)]
        shown = await lattice("--nats", nats_url, "--org", org, "work", "get", work_id, "--journal")
        assert shown.code == 0, shown.stderr
        print(shown.stdout)  # the closing note of the durable-runs issue shows one
        assert "attempt 2 took the run over after entry 4" in shown.stdout
        assert f"effect (key {work_id}/3) answered" in shown.stdout and "s-spare" in shown.stdout
        as_json = await lattice("--nats", nats_url, "--org", org, "work", "get", work_id, "--journal", "-o", "json")
        doc = json.loads(as_json.stdout)
        assert doc["record"]["work_id"] == work_id and len(doc["journal"]) == len(journal)
    finally:
        doomed.stop()
        if spare is not None:
            spare.stop()


@pytest.mark.fault
async def test_a_run_handed_back_on_drain_resumes_on_another_station_from_its_journal(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, tmp_path: Path) -> None:
    # SIGTERM mid-run with a short drain: the station hands the run back (its third turn streams too long to
    # finish in time); the next attempt, elsewhere, does not ask turns 1-2 again or repeat calls 1-2.
    work_id = "drained"
    steps = [Step(tool_calls=(ToolCallStep("effect", {"n": n}, id=f"d{n}"),),
                  text=" ".join(["pondering"] * 16) if n == 3 else "") for n in (1, 2, 3)]
    script(sim, "drainable", *steps, "three done", tokens_per_s=4)
    await client.put_agent(llm_agent(sim, "openai", "drainable", "drainee", tools=[{"function": EFFECT}]))
    ledger = tmp_path / "effects.txt"
    env = {"TEST_MODEL_KEY": "sk-test-0123456789abcdef", EFFECTS_ENV: str(ledger)}
    first = StationProcess(nats_url, org, "s-drain", tmp_path, "--drain-timeout", "0.5", env=env).start()
    second: StationProcess | None = None
    try:
        async with WorkController(await client.org_work(), interval_s=0.2):
            await client.wait_for_stations(1, agent="drainee", timeout_s=30)
            await client.submit(WorkItemSpec(agent="drainee", input="go", max_retries=2), work_id=work_id)
            await eventually(lambda: _result_of_call(client, work_id, 2), timeout_s=30, what="call 2 journalled")
            first.signal(signal.SIGTERM)
            assert await first.wait(20) == 0
            second = StationProcess(nats_url, org, "s-after", tmp_path, env=env).start()
            done = await client.wait_work(work_id, timeout_s=60)
        assert done.phase == WorkPhase.SUCCEEDED and done.attempt == 2 and done.station_id == "s-after"
        assert effects(ledger) == [f"{n} {work_id}/{n}" for n in (1, 2, 3)]
        assert requests_by_turn(sim, "drainable") == Counter({1: 1, 2: 1, 3: 2, 4: 1})
        requeued = [e async for e in client.events(work_id=work_id) if e.short_type == "work.requeued"]
        assert len(requeued) == 1 and str(requeued[0].data.get("reason", "")).startswith("handed back")
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def _take_back(client: LatticeClient, work_id: str) -> None:
    """What the witness does when a station is lost: the attempt is over, the work waits for the next one."""
    store = await client.work_store()
    await store.mutate(work_id, lambda r: None if r.phase.terminal else phases.transition(
        r, WorkPhase.PENDING, reason="taken back by the test (the station is lost)", retry_at=utcnow()))


async def _interrupted_mid_call(client: LatticeClient, nats_url: str, org: str, sim: ModelSim, ledger: Path,
                                work_id: str, tool: dict[str, str]) -> WorkRecord:
    """A run whose one tool call (a slow side effect) is in flight when its attempt is taken away; the next
    attempt runs on another station."""
    script(sim, f"slow-effect-{work_id}", Step(tool_calls=(ToolCallStep("effect", {"n": 1, "seconds": 2.0},
                                                                        id="only"),)), "finished")
    await client.put_agent(llm_agent(sim, "openai", f"slow-effect-{work_id}", f"agent-{work_id}",
                                     tools=[{"function": EFFECT, **tool}]))
    async with WorkController(await client.org_work(), interval_s=0.2), \
            running_station(nats_url, org, "s-a"), running_station(nats_url, org, "s-b"):
        await client.wait_for_stations(2, agent=f"agent-{work_id}", timeout_s=20)
        await client.submit(WorkItemSpec(agent=f"agent-{work_id}", input="once", max_retries=3), work_id=work_id)
        await eventually(lambda: _call_started(client, work_id, 1), timeout_s=20, what="the call to start")
        assert effects(ledger) == []
        await _take_back(client, work_id)
        return await client.wait_work(work_id, timeout_s=30)


async def test_a_call_that_started_and_never_answered_is_escalated_not_run_again(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "effects.txt"
    monkeypatch.setenv(EFFECTS_ENV, str(ledger))
    done = await _interrupted_mid_call(client, nats_url, org, sim, ledger, "unsure", {})
    assert done.phase == WorkPhase.ESCALATED and done.error is not None
    assert done.error.code == ErrorCode.UNKNOWN_OUTCOME and "unsure/1" in done.error.message
    await eventually(lambda: _lines(ledger, 1), timeout_s=5, what="the first call to finish")
    # The superseded attempt's answer came after the next attempt took the journal over: refused, not added.
    journal = await client.journal("unsure")
    assert [e.kind for e in journal] == [JournalKind.TURN, JournalKind.ATTEMPT]
    assert effects(ledger) == ["1 unsure/1"]


async def test_a_tool_that_honours_its_key_is_called_again_with_the_same_key(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "effects.txt"
    monkeypatch.setenv(EFFECTS_ENV, str(ledger))
    done = await _interrupted_mid_call(client, nats_url, org, sim, ledger, "retried", {"unknownOutcome": "retry"})
    assert done.phase == WorkPhase.SUCCEEDED and done.result == "finished" and done.attempt == 2
    await eventually(lambda: _lines(ledger, 2), timeout_s=5, what="both attempts' calls to finish")
    assert effects(ledger) == ["1 retried/1", "1 retried/1"]  # the tool sees one key: it can do the effect once
    assert requests_by_turn(sim, "slow-effect-retried") == Counter({1: 1, 2: 1})

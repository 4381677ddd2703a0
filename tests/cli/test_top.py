"""``lattice top``: its pure parts (keys, rates, a rendered frame), then the real command in a real terminal (tmux),
whose captured screen shows the test's stations and work, and says so when NATS goes away and comes back."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from station_runtime.cli.top_view import Options, Rates, Snapshot, apply_key, render
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import StationRecord, WorkPhase, WorkRecord, utcnow
from station_runtime.contract.specs import WorkItemSpec
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from tests.support.cli import lattice
from tests.support.lattice import echo_agent, running_station
from tests.support.telemetry import skip_or_fail
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


def frame(snap: Snapshot, options: Options | None = None, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(render(snap, options or Options(), utcnow()))
    return console.export_text()


def station(station_id: str, load: int = 0, agents: tuple[str, ...] = ("echo",), age_s: float = 0.5) -> StationRecord:
    now = utcnow()
    return StationRecord(org="o", station_id=station_id, capacity=4, load=load, agents=list(agents),
                         heartbeat_interval_s=2, started_at=now - timedelta(seconds=60),
                         last_heartbeat=now - timedelta(seconds=age_s))


def work(work_id: str, phase: WorkPhase, started_s: float | None = None) -> WorkRecord:
    now = utcnow()
    return WorkRecord(org="o", work_id=work_id, spec=WorkItemSpec(agent="echo", input="x"), phase=phase,
                      created_at=now - timedelta(seconds=100), updated_at=now, station_id="s1",
                      started_at=None if started_s is None else now - timedelta(seconds=started_s))


def test_keys_sort_filter_and_quit() -> None:
    o = Options()
    o = apply_key(o, "s")
    assert o.station_sort == "load"
    o = apply_key(apply_key(o, "s"), "s")
    assert o.station_sort == "id"
    assert apply_key(o, "w").work_sort == "newest"
    for key in "/gpu":
        o = apply_key(o, key)
    assert (o.filter, o.typing) == ("gpu", True)
    o = apply_key(o, "\x7f")
    assert o.filter == "gp"
    o = apply_key(o, "\r")
    assert (o.filter, o.typing) == ("gp", False)
    assert not apply_key(o, "s").quit and apply_key(o, "s").filter == "gp"  # keys act again once Enter is hit
    assert apply_key(o, "\x1b").filter == ""
    assert apply_key(o, "q").quit and apply_key(Options(typing=True), "q").filter == "q"


def test_rates_are_per_second_over_the_window() -> None:
    rates = Rates(window_s=10)
    rates.started = 0.0
    for t in range(20):
        rates.add(WorkPhase.SUCCEEDED, now=float(t) / 2)  # 2 per second for 10 s
    rates.add(WorkPhase.FAILED, now=9.5)
    got = rates.per_second(now=10.0)
    assert got[WorkPhase.SUCCEEDED] == pytest.approx(2.0) and got[WorkPhase.FAILED] == pytest.approx(0.1)
    assert rates.per_second(now=30.0) == {}  # everything aged out


def test_a_frame_shows_stations_queue_slowest_work_and_disconnection() -> None:
    snap = Snapshot(org="acme", url="nats://127.0.0.1:4222",
                    stations=[station("s1", load=3), station("s2", agents=("gpu-agent",)), station("gone", age_s=60)],
                    work=[work("w-pending", WorkPhase.PENDING), work("w-slow", WorkPhase.RUNNING, started_s=90),
                          work("w-fast", WorkPhase.RUNNING, started_s=2)],
                    rates={WorkPhase.SUCCEEDED: 12.5})
    text = frame(snap)
    assert "org acme" in text and "stations 2/3 live, load 3/8" in text
    assert "waiting 1" in text and "running 2" in text and "succeeded 12.5" in text
    assert text.index("w-slow") < text.index("w-fast") < text.index("w-pending")  # the slowest first
    assert "Lost" in text and "DISCONNECTED" not in text
    by_load = frame(snap, Options(station_sort="load"))
    assert by_load.index("s1 ") < by_load.index("s2 ")
    filtered = frame(snap, Options(filter="gpu"))
    assert "s2" in filtered and "s1 " not in filtered
    snap.connected, snap.lost_at = False, utcnow() - timedelta(seconds=5)
    lost = frame(snap)
    assert "DISCONNECTED" in lost and "is unreachable" in lost and "w-slow" in lost  # the last data stays


class Tmux:
    """A detached tmux session running one command, whose screen the test reads."""

    def __init__(self, command: list[str], width: int = 180, height: int = 50) -> None:
        self.name = f"lattice-top-{uuid.uuid4().hex[:8]}"
        self.command = command
        self.size = (width, height)

    def __enter__(self) -> Tmux:
        # A detached session is as large as tmux's default size whatever -x says: the size goes to the program.
        width, height = self.size
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                        "-e", f"COLUMNS={width}", "-e", f"LINES={height}", " ".join(self.command)], check=True,
                       timeout=10)
        return self

    def screen(self) -> str:
        done = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True,
                              timeout=10, check=False)
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True, timeout=10)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True,
                              timeout=10).returncode == 0

    def __exit__(self, *_: object) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, timeout=10)


@pytest.fixture
def tmux() -> Iterator[None]:
    if shutil.which("tmux") is None:
        skip_or_fail("no tmux on PATH: run `make telemetry-bin` (scripts/telemetry-debs.sh)")
    yield


async def test_lattice_top_in_a_terminal_shows_the_lattice_and_rides_out_a_nats_restart(
        tmux: None, tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats", port=-1) as server:
        org = "topview"
        async with LatticeClient(NatsSettings(url=server.url, max_reconnect_attempts=-1), org,
                                 create_state=True) as client:
            await client.put_agent(echo_agent("echo"))
            await client.put_agent(echo_agent("slow", delaySeconds=60, steps=60))
            async with running_station(server.url, org, "s-top-1"), running_station(server.url, org, "s-top-2"):
                await client.wait_for_stations(2, agent="slow")
                for i in range(3):
                    await client.submit(WorkItemSpec(agent="echo", input=f"quick {i}"), work_id=f"quick-{i}")
                await client.submit(WorkItemSpec(agent="slow", input="long"), work_id="long-running-1")
                await client.submit(WorkItemSpec(agent="nobody", input="x"), work_id="nobody-hosts-it")
                command = [sys.executable, "-m", "station_runtime", "--nats", server.url, "--org", org, "top",
                           "--interval", "0.2"]
                with Tmux(command) as term:
                    async def shows(*wanted: str) -> str | None:
                        screen = await asyncio.to_thread(term.screen)
                        return screen if all(w in screen for w in wanted) else None

                    screen = await eventually(lambda: shows("s-top-1", "s-top-2", "long-running-1", "Running",
                                                            "nobody-hosts-it", "Unschedulable"),
                                              timeout_s=30, what="lattice top's screen to show the test's lattice")
                    print(f"\n{screen}")  # the closing note's captured screen
                    assert "stations 2/2 live" in screen and f"org {org}  connected" in screen
                    await client.submit(WorkItemSpec(agent="echo", input="later"), work_id="later-1")
                    await eventually(lambda: shows("work.succeeded"), timeout_s=20,
                                     what="a recent work.succeeded event on the screen")
                    term.keys("/", "n", "o", "b")
                    filtered = await eventually(lambda: shows("filter: nob"), timeout_s=10, what="the filter")
                    assert "nobody-hosts-it" in filtered and "long-running-1" not in filtered
                    term.keys("Escape")
                    await server.stop()
                    await eventually(lambda: shows("DISCONNECTED", "is unreachable"), timeout_s=20,
                                     what="the screen to say NATS went away")
                    await server.restart()
                    await eventually(lambda: shows(f"org {org}  connected", "long-running-1"), timeout_s=30,
                                     what="the screen to come back by itself when NATS is back")
                    assert "DISCONNECTED" not in (await asyncio.to_thread(term.screen))
                    term.keys("q")
                    await eventually(lambda: asyncio.to_thread(lambda: not term.alive()), timeout_s=10,
                                     what="lattice top to quit on q")


async def test_top_once_prints_one_frame(client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(echo_agent("echo"))
    async with running_station(nats_url, org, "s-once"):
        await client.wait_for_stations(1, agent="echo")
        done = await client.wait_work((await client.submit(WorkItemSpec(agent="echo", input="x"),
                                                           work_id="once-1", watch=True)).work_id, timeout_s=10)
        assert done.phase == WorkPhase.SUCCEEDED
        await eventually(lambda: _has_event(client, "once-1", "work.succeeded"), timeout_s=10,
                         what="the work's succeeded event")
        result = await lattice("--nats", nats_url, "--org", org, "top", "--once")
    assert result.code == 0, result.stderr
    assert "s-once" in result.stdout and f"org {org}" in result.stdout
    assert "work.succeeded" in result.stdout and "once-1" in result.stdout  # the recent events, read once


async def _has_event(client: LatticeClient, work_id: str, kind: str) -> bool:
    return kind in [e.short_type async for e in client.events(work_id=work_id)]

"""Fault tests on real servers: stations killed with -9, NATS restarted, the controller restarted, two witnesses
at once. Each asserts that every submitted item ends Succeeded exactly once and that nothing is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.codec import encode
from station_runtime.contract.messages import StationRecord, WorkPhase, WorkRecord, utcnow
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from tests.support.lattice import StationProcess, echo_agent, python_agent
from tests.support.limits import TEST_LIMITS
from tests.support.waiting import eventually
from tests.support.work import controller, event_counts, event_types

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]
P = WorkPhase
HEARTBEAT_S = 0.5


async def submit_many(client: LatticeClient, count: int, agent: str = "slow") -> list[str]:
    ids = []
    for i in range(count):
        ids.append((await client.submit(WorkItemSpec(agent=agent, input=f"item-{i}", max_retries=5))).work_id)
    return ids


async def finals(client: LatticeClient, ids: list[str], timeout_s: float) -> list[WorkRecord]:
    return await asyncio.gather(*(client.wait_work(i, timeout_s=timeout_s) for i in ids))


async def assert_exactly_once(client: LatticeClient, ids: list[str], records: list[WorkRecord], *,
                              lost_events: int = 0) -> None:
    """Call it while the stations still run: StationProcess.stop() kills them with -9, and a station's events
    follow its record writes, so one killed right after its last outcome may never send that outcome's event.
    ``lost_events``: how many outcome events the test's own kills may have cost that way (at most what the killed
    stations held each time): the records say exactly once, the events at most once."""
    assert [r.phase for r in records] == [P.SUCCEEDED] * len(ids), Counter(r.phase for r in records)
    assert [r.result for r in records] == [f"item-{i}" for i in range(len(ids))]

    def enough(c: Counter[tuple[str, str | None]]) -> bool:
        return sum(1 for i in ids if c["work.succeeded", i]) >= len(ids) - lost_events

    counts = await event_counts(client, until=enough)
    succeeded = Counter(subject for (kind, subject), n in counts.items() for _ in range(n) if kind == "work.succeeded")
    assert all(succeeded[i] <= 1 for i in ids), {i: n for i, n in succeeded.items() if n > 1}
    assert sum(1 for i in ids if succeeded[i] == 0) <= lost_events


async def running_on(client: LatticeClient, station: str, ids: list[str]) -> list[str]:
    records = [await client.get_work(i) for i in ids]
    return [r.work_id for r in records if r and r.station_id == station and r.phase == P.RUNNING]


def stations(url: str, org: str, tmp: Path, *names: str, concurrency: int = 4) -> list[StationProcess]:
    return [StationProcess(url, org, n, tmp, "--max-concurrency", str(concurrency), heartbeat_s=HEARTBEAT_S).start()
            for n in names]


async def test_work_of_a_killed_station_runs_elsewhere_within_three_heartbeats(
        client: LatticeClient, nats_url: str, org: str, tmp_path: Path) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=1.5, steps=5))
    procs = stations(nats_url, org, tmp_path, "a", "b", concurrency=8)
    try:
        async with controller(nats_url, org):
            await client.wait_for_stations(2, agent="slow", timeout_s=30)
            ids = await submit_many(client, 8)
            victims = await eventually(lambda: running_on(client, "a", ids), timeout_s=10, what="work running on a")
            procs[0].signal(signal.SIGKILL)
            killed_at = time.monotonic()

            async def all_moved() -> bool:
                records = [await client.get_work(v) for v in victims]
                return all(r is not None and r.station_id == "b" for r in records)

            await eventually(all_moved, timeout_s=10, what="the killed station's work to run on b", interval_s=0.02)
            moved_after = time.monotonic() - killed_at
            records = await finals(client, ids, timeout_s=30)
        await assert_exactly_once(client, ids, records)
        assert moved_after < 3 * HEARTBEAT_S + 1.0, f"took {moved_after:.2f}s"
        for r in records:
            if r.work_id in victims:
                assert r.station_id == "b" and r.attempt == 2
        lost = [e.subject async for e in client.events(category="station") if e.short_type == "station.lost"]
        assert lost == ["a"]  # one event for the loss, however many items it held
    finally:
        for p in procs:
            p.stop()


async def test_an_overdue_station_without_a_responder_is_lost_at_once(nats_url: str, org: str) -> None:
    """Two stations hold work and are late with their beat (still inside the three-beat window): the one NATS has
    no responder for is lost at the next sweep; the one that answers the probe keeps its work."""
    beat = 5.0
    async with LatticeClient(NatsSettings(url=nats_url), org, create_state=True,
                             limits=dataclasses.replace(TEST_LIMITS, presence_ttl_s=60)) as client:
        state = await client.state()
        store = await client.work_store()
        assert client.nc is not None

        async def pong(msg: Msg) -> None:
            await msg.respond(b"")

        await client.nc.subscribe(subjects.station_ping(org, "sleepy"), cb=pong)
        late = utcnow() - timedelta(seconds=beat * 1.55)  # overdue; the beats run out 7 s from now
        work: dict[str, str] = {}
        for station in ("ghost", "sleepy"):
            await state.stations.put(station, encode(StationRecord(
                org=org, station_id=station, capacity=1, agents=["echo"], heartbeat_interval_s=beat,
                started_at=late, last_heartbeat=late, answers_ping=True)))
            now = utcnow()
            record = WorkRecord(org=org, work_id=f"w-{station}", spec=WorkItemSpec(agent="echo"),
                                phase=WorkPhase.RUNNING, station_id=station, attempt_id=f"a-{station}", attempt=1,
                                created_at=now, updated_at=now, assigned_at=now, started_at=now,
                                last_progress_at=now)
            await store.create(record)
            work[station] = record.work_id
        async with controller(nats_url, org), asyncio.timeout(4):  # well before the beats run out
            await eventually(lambda: _moved_on(client, work["ghost"]), timeout_s=4,
                             what="the ghost's work to be requeued")
            sleepy = await client.get_work(work["sleepy"])
        await event_types(client, work["ghost"], until=lambda types: "work.requeued" in types)
        requeued = [e async for e in client.events(work_id=work["ghost"]) if e.short_type == "work.requeued"]
    assert [e.data["reason"] for e in requeued] == ["station ghost lost"]
    assert sleepy is not None and sleepy.phase == WorkPhase.RUNNING and sleepy.station_id == "sleepy"


async def _moved_on(client: LatticeClient, work_id: str) -> bool:
    record = await client.get_work(work_id)
    return record is not None and record.attempt_id != "a-ghost"


async def test_a_restarted_station_resumes_its_work_at_once_without_a_witness(
        client: LatticeClient, nats_url: str, org: str, tmp_path: Path) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=1.0, steps=2))
    a = stations(nats_url, org, tmp_path, "a")[0]
    try:
        await client.wait_for_stations(1, agent="slow", timeout_s=30)
        ids = await submit_many(client, 3)
        # A restarted station resumes what its last beat listed (read record by record: not a scan of the org);
        # what it accepted after that beat is the witness's to requeue (test_pure: restarted without it).
        await eventually(lambda: _beat_lists(client, "a", ids), timeout_s=10, what="a beat of a listing the work")
        a.signal(signal.SIGKILL)
        await a.wait(5)
        a = stations(nats_url, org, tmp_path, "a")[0]  # same id, no controller anywhere
        records = await finals(client, ids, timeout_s=30)
        await assert_exactly_once(client, ids, records)  # before stop() kills it: its last events trail the records
    finally:
        a.stop()
    assert "resumed 3 unfinished work item(s) after a restart, found by the 3 its last beat listed" in a.output()
    assert all(r.station_id == "a" and r.attempt == 1 for r in records)
    resumed = [e async for e in client.events(category="work") if e.data.get("resumed")]
    assert {e.subject for e in resumed} <= set(ids) and resumed


async def _beat_lists(client: LatticeClient, station: str, ids: list[str]) -> bool:
    return any(r.station_id == station and set(ids) <= set(r.holding) for r in await client.stations())


async def test_nothing_is_lost_when_nats_restarts_mid_run(org: str, tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "nats", sync_always=True) as server:
        settings = NatsSettings(url=server.url)
        async with LatticeClient(settings, org, create_state=True,
                                 limits=TEST_LIMITS) as client:
            await client.state()
            await client.put_agent(echo_agent("slow", delaySeconds=0.4, steps=2))
            procs = stations(server.url, org, tmp_path, "a", "b")
            try:
                async with controller(server.url, org):
                    await client.wait_for_stations(2, agent="slow", timeout_s=30)
                    ids = await submit_many(client, 24)
                    await eventually(lambda: _some_done(client, ids), timeout_s=20, what="some work to finish")
                    await server.restart()
                    try:
                        records = await finals(client, ids, timeout_s=45)
                    except Exception as exc:
                        now = [await client.get_work(i) for i in ids]
                        states = Counter((r.phase, r.station_id) for r in now if r)
                        raise AssertionError(f"{exc}; records: {states}; server log:\n"
                                             f"{server.last_log_lines(30)}\nstation a:\n{procs[0].output()[-3000:]}"
                                             ) from exc
            finally:
                for p in procs:
                    p.stop()
            assert [r.phase for r in records] == [P.SUCCEEDED] * len(ids)
            assert [r.result for r in records] == [f"item-{i}" for i in range(len(ids))]


async def test_outcomes_finished_while_nats_is_down_are_written_when_it_is_back_and_nothing_runs_twice(
        org: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of nats-server while 16 runs are in progress; they all end during the outage. Each station keeps
    its outcome and writes it (fenced by its attempt) once NATS is back, and the witness gives the stations time
    to come back instead of requeueing their work: every item ran once (it used to be 14 of 100 twice)."""
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv("LATTICE_TEST_RUNS", str(runs))
    async with EmbeddedNats(tmp_path / "nats", sync_always=True) as server, \
            LatticeClient(NatsSettings(url=server.url), org, create_state=True, limits=TEST_LIMITS) as client:
        await client.put_agent(python_agent("counted", "tests.support.agents:counted"))
        procs = stations(server.url, org, tmp_path, "a", "b", concurrency=8)
        try:
            async with controller(server.url, org):
                await client.wait_for_stations(2, agent="counted", timeout_s=30)
                ids = [(await client.submit(WorkItemSpec(agent="counted", input=f"item-{i}", max_retries=5)))
                       .work_id for i in range(16)]
                await eventually(lambda: _all_running(client, ids), timeout_s=20, what="all 16 to be running")
                await server.stop(kill=True)
                await asyncio.sleep(2.5)  # the outage: every run ends while NATS is away
                await server.start()
                records = await finals(client, ids, timeout_s=60)
        finally:
            for p in procs:
                p.stop()
    assert [r.phase for r in records] == [P.SUCCEEDED] * 16
    assert Counter(runs.read_text().split()) == {f"item-{i}": 1 for i in range(16)}
    assert {r.attempt for r in records} == {1}


async def _all_running(client: LatticeClient, ids: list[str]) -> bool:
    records = [await client.get_work(i) for i in ids]
    return all(r is not None and r.phase == P.RUNNING for r in records)


async def _some_done(client: LatticeClient, ids: list[str]) -> bool:
    records = [await client.get_work(i) for i in ids]
    return sum(1 for r in records if r and r.phase == P.SUCCEEDED) >= 3


async def test_a_restarted_controller_picks_up_where_the_old_one_died(
        client: LatticeClient, nats_url: str, org: str, tmp_path: Path) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=1.0, steps=4))
    procs = stations(nats_url, org, tmp_path, "a", "b", concurrency=8)
    argv = [sys.executable, "-m", "station_runtime", "--nats", nats_url, "--org", org, "controller", "run",
            "--interval", "0.2", "--accept-timeout", "2"]
    first = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.DEVNULL)
    second = None
    try:
        await client.wait_for_stations(2, agent="slow", timeout_s=30)
        ids = await submit_many(client, 8)
        await eventually(lambda: running_on(client, "a", ids), timeout_s=10, what="work running on a")
        first.kill()
        await first.wait()
        procs[0].signal(signal.SIGKILL)  # the station dies while no controller watches
        second = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                      stderr=asyncio.subprocess.DEVNULL)
        records = await finals(client, ids, timeout_s=40)
        await assert_exactly_once(client, ids, records)
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        for p in procs:
            p.stop()


async def test_two_witnesses_at_once_requeue_each_item_once(client: LatticeClient, nats_url: str, org: str,
                                                            tmp_path: Path) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=1.5, steps=3))
    procs = stations(nats_url, org, tmp_path, "a", "b", concurrency=8)
    try:
        async with controller(nats_url, org, name="w1") as w1, controller(nats_url, org, name="w2") as w2:
            await client.wait_for_stations(2, agent="slow", timeout_s=30)
            ids = await submit_many(client, 10)
            victims = await eventually(lambda: running_on(client, "a", ids), timeout_s=10, what="work on a")
            procs[0].signal(signal.SIGKILL)
            records = await finals(client, ids, timeout_s=40)
            assert w1.witness is not None and w2.witness is not None
            requeues = w1.witness.actions.get("requeue", 0) + w2.witness.actions.get("requeue", 0)
        await assert_exactly_once(client, ids, records)
    finally:
        for p in procs:
            p.stop()
    on_a = [r for r in records if r.work_id in victims]
    assert all(r.attempt == 2 for r in on_a)
    assert requeues == len(victims)
    counts = await event_counts(client, until=lambda c: all(c["work.requeued", v] for v in victims))
    requeued_events = Counter(s for (kind, s), n in counts.items() if kind == "work.requeued" for _ in range(n))
    assert all(requeued_events[v] == 1 for v in victims)


@pytest.mark.timeout(180)
async def test_two_hundred_items_survive_a_station_killed_and_restarted_twice(
        client: LatticeClient, nats_url: str, org: str, tmp_path: Path) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=0.2, steps=1))
    procs = stations(nats_url, org, tmp_path, "a", "b", "c")
    try:
        async with controller(nats_url, org):
            await client.wait_for_stations(3, agent="slow", timeout_s=30)
            ids = await submit_many(client, 200)
            for round_ in range(2):
                await eventually(lambda: running_on(client, "c", ids), timeout_s=20, what=f"work on c ({round_})")
                procs[2].signal(signal.SIGKILL)
                await procs[2].wait(5)
                procs[2] = stations(nats_url, org, tmp_path, "c")[0]
            records = await finals(client, ids, timeout_s=120)
        # Each SIGKILL of c may cost the outcome events of what it had just finished (4 at a time).
        await assert_exactly_once(client, ids, records, lost_events=8)
    finally:
        for p in procs:
            p.stop()
    assert {r.station_id for r in records} == {"a", "b", "c"}


async def test_work_queued_at_a_station_longer_than_the_accept_timeout_runs_once(
        client: LatticeClient, nats_url: str, org: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A station takes up to 9 items per run slot (its queue); with one slot and 0.4 s runs the last waits 3.6 s
    for its slot, past the witness's accept timeout (2 s here). Its heartbeats list what it holds, so the witness
    leaves queued work to it: before they did, queued items were requeued, ran twice, or never finished."""
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv("LATTICE_TEST_RUNS", str(runs))
    await client.put_agent(python_agent("counted", "tests.support.agents:counted_briefly"))
    procs = stations(nats_url, org, tmp_path, "solo", concurrency=1)
    try:
        async with controller(nats_url, org):
            await client.wait_for_stations(1, agent="counted", timeout_s=30)
            ids = [(await client.submit(WorkItemSpec(agent="counted", input=f"item-{i}", max_retries=5))).work_id
                   for i in range(12)]
            records = await finals(client, ids, timeout_s=60)
    finally:
        for p in procs:
            p.stop()
    assert [r.phase for r in records] == [P.SUCCEEDED] * 12
    assert Counter(runs.read_text().split()) == {f"item-{i}": 1 for i in range(12)}
    assert {r.attempt for r in records} == {1}

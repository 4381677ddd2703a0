"""What a user's second day found, each reproduced on a real nats-server: a witness whose cost follows what
changes (not what is stored), unreadable records quarantined once, listings that are exact, contention that spends
no retry, an agent that cannot load failing fast with its reason."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json

import pytest

from bench.soak import write_finished_records
from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import StationRecord, WorkPhase, utcnow
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.state import OrgState
from station_runtime.work.auction import AuctionConfig
from station_runtime.work.directory import StationDirectory
from tests.support.lattice import echo_agent, python_agent, running_station
from tests.support.limits import TEST_LIMITS
from tests.support.waiting import eventually
from tests.support.work import controller, event_types

pytestmark = pytest.mark.timeout(120)
P = WorkPhase


async def _consumers(state: OrgState, stream: str) -> set[str]:
    return {info.name for info in await state.js.consumers_info(stream)}


async def _watching_from_now(state: OrgState, stream: str) -> bool:
    """A consumer on the bucket starts right after its last sequence: the new index's watch."""
    last = (await state.js.stream_info(stream)).state.last_seq
    return any(info.config.opt_start_seq == last + 1 for info in await state.js.consumers_info(stream))


async def _ticks(witness: object, more: int) -> None:
    start = witness.ticks  # type: ignore[attr-defined]
    await eventually(lambda: _at_least(witness, start + more), timeout_s=10, what=f"{more} witness ticks")


async def _at_least(witness: object, ticks: int) -> bool:
    return bool(witness.ticks >= ticks)  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_an_idle_witness_looks_at_nothing_whatever_the_history(client: LatticeClient, nats_url: str,
                                                                     org: str) -> None:
    """With 0 and then 20,000 finished records kept, an idle witness decides on no record at all (it used to read
    and decode every record every second: 0.6 of a core with 15,000)."""
    counts = []
    for finished in (0, 20_000):
        if finished:
            await write_finished_records(client, finished)
        async with controller(nats_url, org) as c:
            witness, index = c.witness, c.index
            assert witness is not None
            assert index.finished == finished and not index.live
            decoded = index.decoded
            state = await client.state()
            stream = f"KV_{state.work._name}"
            # The index is ready once its listing is read; its watch subscribes right after.
            await eventually(functools.partial(_watching_from_now, state, stream), timeout_s=10, what="its watch")
            consumers = await _consumers(state, stream)
            await _ticks(witness, 10)
            counts.append((witness.examined, index.decoded - decoded))
            # Its reads leave nothing behind: ten sweeps add no consumer to the work bucket (a sweep used to leave
            # one per second, each alive for five minutes). The earlier controller's watch may still linger there
            # until the server's inactivity threshold removes it.
            assert await _consumers(state, stream) <= consumers
    assert counts == [(0, 0), (0, 0)]


async def test_finished_work_is_deleted_by_the_server_when_the_retention_is_over(nats_url: str, org: str) -> None:
    """The org's retention is written into its work bucket; the write that finishes a record carries it as a TTL,
    and the server deletes the record then: nobody keeps the history in memory to purge it."""
    limits = dataclasses.replace(TEST_LIMITS, work_retention_s=1.0)
    async with LatticeClient(NatsSettings(url=nats_url), org, create_state=True, limits=limits) as client:
        await write_finished_records(client, 50)
        live = await client.submit(WorkItemSpec(agent="nobody-hosts-this", input="x"))
        assert (await client.state()).work_retention_s == 1.0
    async with LatticeClient(NatsSettings(url=nats_url), org) as reader:  # reads the retention from the bucket
        assert (await reader.state()).work_retention_s == 1.0
        await eventually(lambda: _only(reader, live.work_id), timeout_s=10, what="the finished records to expire")


async def _only(client: LatticeClient, work_id: str) -> bool:
    return [r.work_id for r in await client.list_work()] == [work_id]


async def test_an_unreadable_record_is_quarantined_once_and_its_waiter_answered(client: LatticeClient,
                                                                               nats_url: str, org: str) -> None:
    """A record no process can decode (here: a deadline stored as null, what `.inf` used to become) is replaced
    once by a Failed record saying why, its bytes kept; the witness does not read it again and again."""
    state = await client.state()
    poison = {"schema": "lattice.work.record/v1", "org": org, "work_id": "poison", "phase": "Pending",
              "spec": {"agent": "echo", "input": "x", "timeouts": {"startToCloseSeconds": None}},
              "created_at": utcnow().isoformat(), "updated_at": utcnow().isoformat()}
    revision = await state.work.put("poison", json.dumps(poison).encode())
    async with controller(nats_url, org) as c:
        final = await client.wait_work("poison", timeout_s=10)
        assert c.witness is not None
        await _ticks(c.witness, 5)
        assert c.witness.actions.get("fail") == 1
    assert final.phase == P.FAILED and final.error is not None
    assert "could not be read" in final.reason and f"quarantine/poison/{revision}" in final.reason
    assert final.spec.agent == "echo" and final.spec.timeouts.start_to_close_seconds == 600  # what still held
    kept = await (await state.results()).get(f"quarantine/poison/{revision}")
    assert json.loads(kept.data or b"") == poison
    assert "work.failed" in await event_types(client, "poison")


async def test_listings_are_exact_however_many_at_once(client: LatticeClient) -> None:
    """nats-py's listing (an ordered consumer) returned nothing in 1-5 of 300 calls, 13-15 of 100 with 10 at
    once: its end marker could come before the entries. A listing is exact, and leaves no consumer behind."""
    state = await client.state()
    await asyncio.gather(*(state.work.put(f"k{i}", b"v") for i in range(300)))
    for _ in range(30):
        sizes = await asyncio.gather(*(state.list("work") for _ in range(10)))
        assert sizes and all(len(s) == 300 for s in sizes), [len(s) for s in sizes]
    info = await state.js.stream_info(f"KV_{state.work._name}")
    assert info.state.consumer_count == 0


async def test_a_directory_opened_at_any_moment_sees_every_station(client: LatticeClient, org: str) -> None:
    """A station directory (the registry followed live) is exact from the moment it starts: nats-py's KV watch
    could end its snapshot before the entries came, and work submitted then was called unschedulable with "no
    station registered" although three stations were beating."""
    state = await client.state()
    for sid in ("a", "b", "c"):
        now = utcnow()
        await state.stations.put(sid, StationRecord(org=org, station_id=sid, capacity=1, heartbeat_interval_s=60,
                                                    started_at=now, last_heartbeat=now).model_dump_json().encode())
    for _ in range(10):
        directories = [StationDirectory(state) for _ in range(10)]
        await asyncio.gather(*(d.start() for d in directories))
        try:
            assert [sorted(d.records) for d in directories] == [["a", "b", "c"]] * 10
        finally:
            await asyncio.gather(*(d.stop() for d in directories))


async def test_contention_spends_no_retries(client: LatticeClient, nats_url: str, org: str) -> None:
    """Four run slots, no queues, 60 items at once that may not be retried: every item waits its turn and
    succeeds on its first attempt; being placed again is not a failed attempt (it used to escalate items)."""
    await client.put_agent(echo_agent("slow", delaySeconds=0.1, steps=1))
    client.auction_config = AuctionConfig(deadline_s=0.5, assign_timeout_s=1.0)
    async with controller(nats_url, org), \
            running_station(nats_url, org, "s1", max_concurrency=2, max_queue=0), \
            running_station(nats_url, org, "s2", max_concurrency=2, max_queue=0):
        await client.wait_for_stations(2, agent="slow", timeout_s=10)
        records = await asyncio.gather(*(client.submit(WorkItemSpec(agent="slow", input=f"i{i}", max_retries=0),
                                                       watch=True) for i in range(60)))
        finals = await asyncio.gather(*(client.wait_work(r.work_id, timeout_s=60) for r in records))
        auctioneer = await client.auctioneer()
    assert [f.phase for f in finals] == [P.SUCCEEDED] * 60
    assert {f.attempt for f in finals} == {1}
    assert auctioneer.contended > 0  # the stations were full: contention did happen


async def test_an_agent_no_station_can_load_fails_its_work_at_once_saying_why(client: LatticeClient,
                                                                            nats_url: str, org: str) -> None:
    """An Agent whose module does not import used to look configured; its work waited for ever. The station
    reports why it cannot load it, and work for it fails at once with that reason."""
    await client.put_agent(python_agent("broken", "no_such_module_here:run"))
    async with running_station(nats_url, org, "s1"):
        async def reported() -> str | None:
            return next((r.agent_errors.get("broken") for r in await client.stations()), None)

        why = await eventually(reported, timeout_s=10, what="s1 to report that it cannot load the agent")
        assert "no_such_module_here" in why
        record = await client.submit(WorkItemSpec(agent="broken", input="x"), watch=True)
        final = await client.wait_work(record.work_id, timeout_s=10)
    assert final.phase == P.FAILED and final.error is not None
    assert "cannot be loaded by any station" in final.reason and "s1: " in final.reason
    assert "no_such_module_here" in final.reason

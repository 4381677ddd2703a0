"""Presence on a real nats-server: announce, heartbeats, registry expiry after SIGKILL, goodbye and drain on
SIGTERM, and live agent reload."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from station_runtime.client import LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.codec import decode, encode
from station_runtime.contract.messages import (
    ErrorCode,
    Goodbye,
    Heartbeat,
    InvokeError,
    PresenceAnnounce,
    StationRecord,
    StationStatus,
)
from tests.support.lattice import StationProcess, echo_agent, running_station
from tests.support.waiting import eventually


@asynccontextmanager
async def listen(client: LatticeClient, subject: str) -> AsyncIterator[asyncio.Queue[Msg]]:
    assert client.nc is not None
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await client.nc.subscribe(subject, cb=queue.put)
    await client.nc.flush()
    try:
        yield queue
    finally:
        await sub.unsubscribe()


async def next_of(queue: asyncio.Queue[Msg], model: type, timeout_s: float = 5.0, **match: object) -> object:
    async with asyncio.timeout(timeout_s):
        while True:
            message = decode((await queue.get()).data, model)
            if all(getattr(message, k) == v for k, v in match.items()):
                return message


async def record_of(client: LatticeClient, station_id: str) -> StationRecord | None:
    return next((r for r in await client.stations() if r.station_id == station_id), None)


async def test_announce_carries_the_record_and_heartbeats_follow(client: LatticeClient, nats_url: str,
                                                                 org: str) -> None:
    await client.put_agent(echo_agent("echo", capabilities=["summarize"]))
    async with listen(client, subjects.presence(org, "announce")) as announces, \
            listen(client, subjects.presence(org, "heartbeat")) as beats, \
            running_station(nats_url, org, "s1", capabilities=("text",), labels={"zone": "a"}, max_concurrency=3):
            announce = await next_of(announces, PresenceAnnounce)
            assert isinstance(announce, PresenceAnnounce)
            record = announce.record
            assert (record.org, record.station_id, record.capacity, record.agents) == (org, "s1", 3, ["echo"])
            assert record.capabilities == ["summarize", "text"] and record.labels == {"zone": "a"}
            assert record.version and record.pid and record.status == StationStatus.READY
            first = await next_of(beats, Heartbeat)
            second = await next_of(beats, Heartbeat)
            assert isinstance(first, Heartbeat) and isinstance(second, Heartbeat)
            assert second.seq == first.seq + 1 and second.capacity == 3
            stored = await record_of(client, "s1")
            assert stored is not None and stored.last_heartbeat >= record.last_heartbeat


async def test_a_killed_station_disappears_from_the_registry_by_itself(client: LatticeClient, nats_url: str,
                                                                       org: str, tmp_path: Path) -> None:
    station = StationProcess(nats_url, org, "doomed", tmp_path).start()
    try:
        await eventually(lambda: record_of(client, "doomed"), timeout_s=20, what="the station to register")
        station.signal(signal.SIGKILL)
        await station.wait(5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def gone() -> bool:
            return await record_of(client, "doomed") is None

        await eventually(gone, timeout_s=5, what="the registry to forget the killed station")
        # The presence TTL is 1.5 s (3 beats of 0.5 s): the record may not outlive it by much.
        assert loop.time() - t0 < 3.0
    finally:
        station.stop()


@pytest.mark.timeout(60)
async def test_sigterm_drains_in_flight_work_refuses_new_work_then_says_goodbye(
        client: LatticeClient, nats_url: str, org: str, tmp_path: Path) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=1.5, steps=1))
    station = StationProcess(nats_url, org, "s1", tmp_path).start()
    try:
        async with listen(client, subjects.presence(org, "heartbeat")) as beats, \
                listen(client, subjects.presence(org, "goodbye")) as goodbyes:
            await client.wait_for_stations(1, agent="slow", timeout_s=20)
            running = asyncio.create_task(client.invoke("finish me", agent="slow", timeout_s=10))
            await next_of(beats, Heartbeat, load=1)
            station.signal(signal.SIGTERM)
            await next_of(beats, Heartbeat, status=StationStatus.DRAINING)
            assert client.nc is not None
            reply = await client.nc.request(subjects.agent_invoke(org, "s1"),
                                            encode_request("new work"), timeout=5)
            refused = decode(reply.data, InvokeError)
            assert refused.code == ErrorCode.DRAINING
            assert (await running).output == "finish me"
            goodbye = await next_of(goodbyes, Goodbye, timeout_s=10)
            assert isinstance(goodbye, Goodbye) and goodbye.station_id == "s1"
            assert await station.wait(10) == 0
            assert await record_of(client, "s1") is None
    finally:
        station.stop()
    assert "abandoned" not in station.output()


def encode_request(text: str) -> bytes:
    from station_runtime.contract.messages import InvokeRequest

    return encode(InvokeRequest(request_id="late", agent="slow", input=text))


async def test_agents_load_live_follow_updates_and_respect_selectors(client: LatticeClient, nats_url: str,
                                                                     org: str) -> None:
    from station_runtime.contract.selectors import parse_selector

    async with listen(client, subjects.presence(org, "announce")) as announces, \
            running_station(nats_url, org, "s1", labels={"zone": "a"},
                            agent_selector=parse_selector("team=docs")) as station:
        await next_of(announces, PresenceAnnounce)
        await client.put_agent(echo_agent("echo", labels={"team": "docs"}, prefix="v1:"))
        await next_of(announces, PresenceAnnounce, timeout_s=5)
        assert (await client.invoke("x", agent="echo", station="s1", timeout_s=5)).output == "v1:x"

        await client.put_agent(echo_agent("echo", labels={"team": "docs"}, prefix="v2:"))
        await eventually(lambda: _revised(station), timeout_s=5, what="the agent to reload")
        assert (await client.invoke("x", agent="echo", station="s1", timeout_s=5)).output == "v2:x"

        await client.put_agent(echo_agent("other-team", labels={"team": "ops"}))
        agent = echo_agent("elsewhere", labels={"team": "docs"})
        agent.spec.station_selector = parse_selector("zone=b")
        await client.put_agent(agent)
        assert client.nc is not None
        state = await client.state()
        await state.agents.put("garbage", b"{not an agent")
        await client.put_agent(echo_agent("last", labels={"team": "docs"}))
        await eventually(lambda: _hosts(station, "last"), timeout_s=5, what="the last agent to load")
        assert set(station.agents.agents) == {"echo", "last"}  # type: ignore[union-attr]
        assert "garbage" in station.agents.load_errors  # type: ignore[union-attr]

        await client.delete_agent("echo")
        await eventually(lambda: _not_hosts(station, "echo"), timeout_s=5, what="the deleted agent to go")
        record = await next_of(announces, PresenceAnnounce, timeout_s=5)
        assert isinstance(record, PresenceAnnounce)


async def _revised(station: object) -> bool:
    agent = station.agents.get("echo")  # type: ignore[attr-defined]
    return agent is not None and agent.definition.spec.model.params.get("prefix") == "v2:"


async def _hosts(station: object, name: str) -> bool:
    return station.agents.get(name) is not None  # type: ignore[attr-defined]


async def _not_hosts(station: object, name: str) -> bool:
    return station.agents.get(name) is None  # type: ignore[attr-defined]

"""agent.invoke on a real nats-server: routing, the concurrency cap, errors that keep the station serving."""

from __future__ import annotations

import asyncio
import time

import pytest

from station_runtime.client import InvokeFailed, LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.codec import decode_invoke_reply, encode
from station_runtime.contract.messages import ErrorCode, InvokeError, InvokeRequest, InvokeResult
from tests.support.lattice import echo_agent, python_agent, running_station
from tests.support.waiting import eventually


async def test_invoke_runs_the_agent_and_reports_the_station(client: LatticeClient, nats_url: str,
                                                             org: str) -> None:
    await client.put_agent(echo_agent("echo", capabilities=["say"], prefix="> "))
    async with running_station(nats_url, org, "s1"):
        result = await client.invoke("hello", agent="echo", timeout_s=5)
        assert (result.output, result.station_id, result.agent) == ("> hello", "s1", "echo")
        by_capability = await client.invoke({"x": 1}, capability="say", timeout_s=5)
        assert by_capability.output == {"x": 1}


async def test_concurrency_cap_is_never_exceeded_and_is_reached(client: LatticeClient, nats_url: str,
                                                                org: str) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=0.3, steps=1))
    async with running_station(nats_url, org, "s1", max_concurrency=2, max_queue=10):
        results = await asyncio.gather(*(client.invoke(i, agent="slow", timeout_s=10) for i in range(6)))
    intervals = [(r.started_at, r.finished_at) for r in results]
    overlap = max(sum(1 for s, f in intervals if s <= t < f) for t, _ in intervals)
    assert overlap == 2


async def test_a_full_station_answers_busy_at_once(client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=1.0, steps=1))
    async with running_station(nats_url, org, "s1", max_concurrency=1, max_queue=0) as station:
        first = asyncio.create_task(client.invoke("a", agent="slow", timeout_s=10))
        await eventually(lambda: _ready(station.slots.running == 1), timeout_s=5, what="the first run to start")
        t0 = time.monotonic()
        reply = await _raw_invoke(client, org, "s1", InvokeRequest(request_id="r2", agent="slow"))
        assert isinstance(reply, InvokeError) and reply.code == ErrorCode.BUSY
        assert time.monotonic() - t0 < 0.5
        assert (await first).output == "a"


async def test_one_slow_agent_does_not_stall_the_others(client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(python_agent("sleeper", "tests.support.agents:slow"))
    await client.put_agent(echo_agent("fast"))
    async with running_station(nats_url, org, "s1", max_concurrency=4):
        slow = asyncio.create_task(client.invoke(1.5, agent="sleeper", timeout_s=10))
        t0 = time.monotonic()
        for _ in range(5):
            assert (await client.invoke("quick", agent="fast", timeout_s=5)).output == "quick"
        assert time.monotonic() - t0 < 1.0, "fast invokes waited for the blocking agent"
        assert not slow.done()
        assert (await slow).output == "slept 1.5"


async def test_malformed_requests_get_an_error_reply_and_the_station_keeps_serving(
        client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(echo_agent("echo"))
    async with running_station(nats_url, org, "s1"):
        assert client.nc is not None
        subject = subjects.agent_invoke(org, "s1")
        for garbage in (b"", b"not json", b'{"schema": "lattice.invoke.request/v1"}',
                        b'{"request_id": "r", "agent": "x.y"}', b"\xff\xfe", b"{" * 10_000):
            reply = decode_invoke_reply((await client.nc.request(subject, garbage, timeout=5)).data)
            assert isinstance(reply, InvokeError) and reply.code == ErrorCode.BAD_REQUEST, garbage[:20]
            assert reply.station_id == "s1" and reply.message
        assert (await client.invoke("still here", agent="echo", timeout_s=5)).output == "still here"


async def test_agent_errors_timeouts_and_unknown_agents(client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(python_agent("boom", "tests.support.agents:boom"))
    await client.put_agent(python_agent("weird", "tests.support.agents:not_json"))
    await client.put_agent(echo_agent("slow", delaySeconds=2.0, steps=1))
    async with running_station(nats_url, org, "s1"):
        with pytest.raises(InvokeFailed) as exc:
            await client.invoke("x", agent="boom", timeout_s=5)
        assert exc.value.error.code == ErrorCode.AGENT_ERROR and "the model caught fire" in str(exc.value)
        with pytest.raises(InvokeFailed, match="not JSON"):
            await client.invoke("x", agent="weird", timeout_s=5)
        with pytest.raises(InvokeFailed) as exc:
            await client.invoke("x", agent="slow", timeout_s=0.2)
        assert exc.value.error.code == ErrorCode.TIMEOUT
        reply = await _raw_invoke(client, org, "s1", InvokeRequest(request_id="r", agent="ghost"))
        assert isinstance(reply, InvokeError) and reply.code == ErrorCode.NOT_FOUND


async def test_python_agents_get_the_execution_context(client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(python_agent("ctx", "tests.support.agents:with_context"))
    await client.put_agent(python_agent("upper", "tests.support.agents:async_upper"))
    async with running_station(nats_url, org, "s1"):
        result = await client.invoke("hi", agent="ctx", timeout_s=5)
        assert isinstance(result.output, dict) and result.output["input"] == "hi" and result.output["request_id"]
        assert (await client.invoke("hi", agent="upper", timeout_s=5)).output == "HI"


async def test_work_spreads_over_stations_and_skips_busy_ones(client: LatticeClient, nats_url: str,
                                                              org: str) -> None:
    await client.put_agent(echo_agent("slow", delaySeconds=0.3, steps=1))
    async with running_station(nats_url, org, "s1", max_concurrency=2), \
            running_station(nats_url, org, "s2", max_concurrency=2):
        await client.wait_for_stations(2, agent="slow", timeout_s=5)
        results = await asyncio.gather(*(client.invoke(i, agent="slow", timeout_s=10) for i in range(8)))
    assert {r.station_id for r in results} == {"s1", "s2"}


async def _ready(value: bool) -> bool:
    return value


async def _raw_invoke(client: LatticeClient, org: str, station: str,
                      request: InvokeRequest) -> InvokeResult | InvokeError:
    assert client.nc is not None
    msg = await client.nc.request(subjects.agent_invoke(org, station), encode(request), timeout=5)
    return decode_invoke_reply(msg.data)

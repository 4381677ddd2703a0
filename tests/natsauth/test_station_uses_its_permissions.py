"""A station's permissions are exactly what it uses: a real station with least-privilege creds, on a real
nats-server in operator mode, goes through its whole life and its off-the-happy-path moments (a presence record
taken over, a work record changed under it, an attempt re-run after it stored a large result, drain), while every
subject its connection publishes to or subscribes to is recorded. Every one is allowed by its permissions (and the
server refuses nothing), and every permission was used."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.messages import JournalKind, WorkPhase, WorkRecord
from station_runtime.executors.tools.lattice import child_of
from station_runtime.modelsim import ModelSim, Step, ToolCallStep
from station_runtime.natsauth import OrgAccount, Tenancy, prepare_org_state, station_permissions
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from station_runtime.station.runtime import Station
from station_runtime.station.settings import StationSettings
from station_runtime.work import phases
from station_runtime.work.auction import AuctionConfig
from station_runtime.work.controller import WorkController
from tests.natsauth.conftest import connected, server_log_since, write_creds
from tests.support.agents_llm import llm_agent, script
from tests.support.lattice import echo_agent
from tests.support.limits import TEST_LIMITS
from tests.support.waiting import eventually
from tests.support.work import FAST

pytestmark = pytest.mark.timeout(90)
ORG = "orguse"
STATION = "s1"
#: Permissions no scenario here provokes, with why they are there anyway.
NOT_PROVOKED = {
    # The server asks a push consumer (the agents watch) for flow control only when its deliveries pile up
    # unacknowledged; a station that answers no flow control request stalls its watch, so the permission stays.
    subjects.js_flow_control(subjects.kv_stream(subjects.bucket(ORG, "agents"))),
}


class Recorder:
    """The subjects one connection (by name) publishes to and subscribes to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.published: set[str] = set()
        self.subscribed: set[str] = set()


@contextlib.contextmanager
def recording(name: str) -> Iterator[Recorder]:
    recorder = Recorder(name)
    publish, subscribe = NatsClient.publish, NatsClient.subscribe

    async def recorded_publish(self: NatsClient, subject: str, *args: Any, **kwargs: Any) -> None:
        if self.options.get("name") == name:
            recorder.published.add(subject)
        await publish(self, subject, *args, **kwargs)

    async def recorded_subscribe(self: NatsClient, subject: str, *args: Any, **kwargs: Any) -> Any:
        if self.options.get("name") == name:
            recorder.subscribed.add(subject)
        return await subscribe(self, subject, *args, **kwargs)

    NatsClient.publish = recorded_publish  # type: ignore[method-assign]
    NatsClient.subscribe = recorded_subscribe  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        NatsClient.publish = publish  # type: ignore[method-assign]
        NatsClient.subscribe = subscribe  # type: ignore[method-assign]


async def _phase(client: LatticeClient, work_id: str, phase: WorkPhase) -> WorkRecord | None:
    record = await client.get_work(work_id)
    return record if record is not None and record.phase == phase else None


async def _calling(client: LatticeClient, work_id: str) -> bool:
    entries = await client.journal(work_id)
    return any(e.kind == JournalKind.TURN and e.started for e in entries)


async def test_a_station_uses_exactly_its_permissions(server: EmbeddedNats, tenancy: Tenancy,
                                                      tmp_path: Path) -> None:
    account: OrgAccount = await tenancy.ensure_org(ORG)
    async with connected(server.url, tenancy.issue_admin_creds(account)) as (nc, _):
        await prepare_org_state(nc, ORG, TEST_LIMITS)
    log_offset = server.log_path.stat().st_size
    admin = NatsSettings(url=server.url, creds_file=write_creds(tmp_path / "admin.creds",
                                                                tenancy.issue_admin_creds(account)))
    station_nats = NatsSettings(url=server.url, inbox_prefix=subjects.station_inbox_prefix(STATION),
                                creds_file=write_creds(tmp_path / "s1.creds",
                                                       tenancy.issue_station_creds(account, STATION)))
    big = "y" * 150_000
    with recording(f"station-{ORG}-{STATION}") as used:
        async with LatticeClient(admin, ORG, create_state=True, limits=TEST_LIMITS, policy=FAST,
                                 auction=AuctionConfig(deadline_s=0.5, assign_timeout_s=2.0)) as client, \
                WorkController(await client.org_work(), interval_s=0.2), ModelSim() as sim:
            await client.put_agent(echo_agent("echo", prefix="done: "))
            await client.put_agent(echo_agent("slow", delaySeconds=1.2, steps=6))
            submit = ToolCallStep("lattice_submit", {"agent": "echo", "input": "child"}, id="c1")
            wait = ToolCallStep("lattice_await", {"work_ids": [child_of("deleg-1", 1)]}, id="c2")
            invoke = ToolCallStep("lattice_invoke", {"agent": "echo", "input": "quick"}, id="c3")
            script(sim, "delegating", Step(tool_calls=(submit,)), Step(tool_calls=(wait,)),
                   Step(tool_calls=(invoke,)), "{tool_results}")
            await client.put_agent(llm_agent(sim, "openai", "delegating", "delegator",
                                             tools=[{"lattice": ["submit", "await", "invoke"]}]))
            # A journaled run whose first answer is large (kept in the object store) and whose tool call is
            # still running when its attempt is taken from it: the next attempt reads the journal back.
            nap = ToolCallStep("sleepy", {"seconds": 1.5}, id="n1")
            script(sim, "napping", Step(text="z" * 70_000, tool_calls=(nap,)), "rested")
            await client.put_agent(llm_agent(sim, "openai", "napping", "napper", tools=[
                {"function": "tests.support.agent_tools:sleepy", "unknownOutcome": "retry"}]))
            station = Station(StationSettings(org=ORG, station_id=STATION, nats=station_nats,
                                              heartbeat_interval_s=0.5, drain_timeout_s=5.0))
            await station.start()
            try:
                await client.wait_for_stations(1, agent="slow", timeout_s=10)
                assert (await client.invoke("hi", agent="echo", timeout_s=5)).output == "done: hi"
                # Async work with progress; a large result into the object store.
                slow = await client.submit(WorkItemSpec(agent="slow", input="x"), watch=True)
                large = await client.submit(WorkItemSpec(agent="echo", input=big), watch=True)
                assert (await client.wait_work(large.work_id, timeout_s=15)).result_ref
                # Its presence record taken over: its next beat re-reads its own key (direct get).
                stations_kv = await client.connection().jetstream().key_value(subjects.bucket(ORG, "stations"))
                await stations_kv.put(STATION, (await stations_kv.get(STATION)).value or b"")
                # Its work record changed under it: its next write re-reads the record (direct get).
                store = await client.work_store()
                await store.mutate(slow.work_id, lambda r: r.model_copy(update={"progress_message": "poked"}))
                assert (await client.wait_work(slow.work_id, timeout_s=15)).phase == WorkPhase.SUCCEEDED
                # An attempt taken from it while it runs: its next write finds the attempt superseded; the next
                # attempt runs and stores its large result under its own name.
                again = await client.submit(WorkItemSpec(agent="slow", input=big, max_retries=3), watch=True)
                await eventually(lambda: _phase(client, again.work_id, WorkPhase.RUNNING), timeout_s=10,
                                 what="the large slow item to run")
                await store.mutate(again.work_id, lambda r: None if r.phase.terminal else phases.transition(
                    r, WorkPhase.PENDING, reason="taken back by the test", retry_at=None))
                final = await client.wait_work(again.work_id, timeout_s=30)
                assert final.phase == WorkPhase.SUCCEEDED and final.result_ref and final.attempt == 2
                # The same for a journaled agent run: the next attempt replays the journal (its large entry from
                # the object store) and runs the unanswered call again.
                nap_item = await client.submit(WorkItemSpec(agent="napper", input="rest", max_retries=3), watch=True)
                await eventually(lambda: _phase(client, nap_item.work_id, WorkPhase.RUNNING), timeout_s=10,
                                 what="the napper to run")
                await eventually(lambda: _calling(client, nap_item.work_id), timeout_s=10,
                                 what="the napper's tool call to start")
                await store.mutate(nap_item.work_id, lambda r: None if r.phase.terminal else phases.transition(
                    r, WorkPhase.PENDING, reason="taken back by the test", retry_at=None))
                napped = await client.wait_work(nap_item.work_id, timeout_s=30)
                assert napped.phase == WorkPhase.SUCCEEDED and napped.result == "rested" and napped.attempt == 2
                # An agent of the station delegates: it writes its children's records (the controller places
                # them) and awaits them, for lattice_submit + lattice_await and for lattice_invoke.
                parent = await client.submit(WorkItemSpec(agent="delegator", input="go"), work_id="deleg-1",
                                             watch=True)
                done = await client.wait_work(parent.work_id, timeout_s=30)
                assert done.phase == WorkPhase.SUCCEEDED, done.error
                assert "done: quick" in str(done.result)
                assert done.children == [child_of("deleg-1", 1), child_of("deleg-1", 3)]
                child = await client.get_work(child_of("deleg-1", 1))
                assert child is not None and child.result == "done: child" and child.parent_id == "deleg-1"
            finally:
                await station.stop("test over")
    assert "Violation" not in server_log_since(server, log_offset)
    perms = station_permissions(ORG, STATION)
    # Replies to requests it received go to the requester's inbox (allow_responses), under the default prefix.
    # A station that delegates is also a requester: the bids and answers it gives its own auctions and invokes go
    # to its own inbox, the same way.
    replies = (f"{subjects.INBOX_PREFIX}.", f"{subjects.station_inbox_prefix(STATION)}.")
    published = {s for s in used.published if not s.startswith(replies)}
    assert not [s for s in published if not any(subjects.matches(p, s) for p in perms.pub_allow)]
    assert not [s for s in used.subscribed if not any(subjects.matches(p, s) for p in perms.sub_allow)]
    unused_pub = {p for p in perms.pub_allow if not any(subjects.matches(p, s) for s in published)}
    unused_sub = {p for p in perms.sub_allow if not any(subjects.matches(p, s) for s in used.subscribed)}
    assert unused_pub - NOT_PROVOKED == set(), sorted(published)
    assert unused_sub == set(), sorted(used.subscribed)

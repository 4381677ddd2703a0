"""Stations on a real nats-server in operator mode, each org in its own account:

* a station with nothing but its least-privilege creds runs the real runtime end to end (presence, agents,
  invoke, auction, async work with progress, events, a large result in the object store, drain) and the server
  refuses it nothing;
* it cannot see another org's subjects or state;
* it cannot speak or write as another station of its own org, nor read that station's requests or replies.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import pytest
from nats.js.errors import BucketNotFoundError

from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.messages import WorkPhase, WorkProgress, WorkRecord
from station_runtime.natsauth import (
    OrgAccount,
    Permissions,
    Tenancy,
    prepare_org_state,
    results_bucket,
    station_inbox_prefix,
)
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from station_runtime.natsio.requests import direct_last
from station_runtime.natsio.state import OrgState
from station_runtime.station.runtime import Station
from station_runtime.station.settings import StationSettings
from station_runtime.work.auction import AuctionConfig
from station_runtime.work.controller import WorkController
from station_runtime.work.store import WorkStore, encode_payload
from tests.natsauth.conftest import connected, server_log_since, write_creds
from tests.support.lattice import echo_agent
from tests.support.limits import TEST_LIMITS
from tests.support.work import FAST, event_types

pytestmark = [pytest.mark.timeout(90), pytest.mark.security]

LIMITS = TEST_LIMITS
ORG_A, ORG_B = "orga", "orgb"


@pytest.fixture
async def org_a(tenancy: Tenancy, server: EmbeddedNats) -> AsyncIterator[OrgAccount]:
    account = await tenancy.ensure_org(ORG_A)
    async with connected(server.url, tenancy.issue_admin_creds(account)) as (nc, _):
        await prepare_org_state(nc, ORG_A, LIMITS)
    yield account


@pytest.fixture
async def org_b(tenancy: Tenancy, server: EmbeddedNats) -> AsyncIterator[OrgAccount]:
    account = await tenancy.ensure_org(ORG_B)
    async with connected(server.url, tenancy.issue_admin_creds(account)) as (nc, _):
        state = await prepare_org_state(nc, ORG_B, LIMITS)
        await state.work.put("secret-work", b"org b only")
    yield account


async def test_a_least_privilege_station_runs_the_whole_runtime(
        server: EmbeddedNats, tenancy: Tenancy, org_a: OrgAccount, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    log_offset = server.log_path.stat().st_size
    admin = NatsSettings(url=server.url, creds_file=write_creds(tmp_path / "admin.creds",
                                                                tenancy.issue_admin_creds(org_a)))
    station_nats = NatsSettings(url=server.url,
                                creds_file=write_creds(tmp_path / "s1.creds", tenancy.issue_station_creds(org_a, "s1")),
                                inbox_prefix=station_inbox_prefix("s1"))
    big = "x" * 200_000
    progress: list[WorkProgress] = []

    async def on_progress(update: WorkProgress | WorkRecord) -> None:
        if isinstance(update, WorkProgress):
            progress.append(update)

    async with LatticeClient(admin, ORG_A, create_state=True, limits=LIMITS, policy=FAST,
                             auction=AuctionConfig(deadline_s=0.5, assign_timeout_s=2.0)) as client, \
            WorkController(await client.org_work(), interval_s=0.2):
        await client.put_agent(echo_agent("echo", prefix="done: "))
        await client.put_agent(echo_agent("slow", delaySeconds=0.6, steps=3))
        station = Station(StationSettings(org=ORG_A, station_id="s1", nats=station_nats, heartbeat_interval_s=0.5,
                                          drain_timeout_s=5.0))
        await station.start()
        try:
            await client.wait_for_stations(1, agent="slow", timeout_s=10)
            # Synchronous invoke: request on its own subject, reply through allow_responses.
            assert (await client.invoke("hi", agent="echo", timeout_s=5)).output == "done: hi"
            # Async work: auction bid (reply), assignment (reply), CAS on the record, progress, events.
            slow = await client.submit(WorkItemSpec(agent="slow", input="x"))
            slow_final = await client.wait_work(slow.work_id, timeout_s=15, on_progress=on_progress)
            # A large result goes to the object store.
            large = await client.submit(WorkItemSpec(agent="echo", input=big))
            large_final = await client.wait_work(large.work_id, timeout_s=15)
            assert large_final.phase == WorkPhase.SUCCEEDED and large_final.result_ref
            assert await client.result(large_final) == "done: " + big
        finally:
            await station.stop("test over")
        assert slow_final.phase == WorkPhase.SUCCEEDED and slow_final.result == "x"
        assert [p.percent for p in progress][-1] == 100.0
        events = await event_types(client, slow.work_id)
        assert {"work.started", "work.progress", "work.succeeded"} <= set(events)
        assert [e.short_type async for e in client.events(category="station")] == ["station.joined", "station.left"]
        assert await client.stations() == []  # goodbye deleted its own presence record
    assert station.events is not None and station.events.failures == 0
    assert station.work is not None and station.work.completed == 2 and station.work.rejected == 0
    # The server refused it nothing, and no client saw an error.
    assert "Violation" not in server_log_since(server, log_offset)
    assert not [r for r in caplog.records if "violation" in r.getMessage().lower()]


async def test_a_station_cannot_see_another_orgs_subjects_or_state(
        server: EmbeddedNats, tenancy: Tenancy, org_a: OrgAccount, org_b: OrgAccount) -> None:
    station_creds = tenancy.issue_station_creds(org_a, "s1")
    async with connected(server.url, station_creds, inbox_prefix="_INBOX_s1") as (station, observed), \
            connected(server.url, tenancy.issue_admin_creds(org_b)) as (admin_b, _):
        # Its permissions do not name org B's subjects or buckets: refused by the server.
        await station.subscribe(subjects.org_root(ORG_B) + ".>")
        await observed.wait_for('subscription to "lattice.v1.orgb.>"')
        with pytest.raises(nats.errors.TimeoutError):
            await station.jetstream(timeout=0.5).key_value(subjects.bucket(ORG_B, "work"))
        await observed.wait_for("publish to \"$js.api.stream.info.kv_lattice-orgb-work\"")
    # Even a user of org A with every permission sees nothing of org B: they are separate accounts.
    unrestricted = tenancy.authority.issue_user_creds(org_a, "probe", Permissions.unrestricted())
    async with connected(server.url, unrestricted) as (probe, _), \
            connected(server.url, tenancy.issue_admin_creds(org_b)) as (admin_b, _):
        seen = await probe.subscribe(">")
        await admin_b.publish(subjects.station_auction(ORG_B, "s1"), b"org b auction")
        await admin_b.publish(subjects.presence(ORG_B, "heartbeat"), b"org b beat")
        # Fence: once B's flush returns, the server has routed B's messages; A's flush then returns after anything
        # routed to A.
        await admin_b.flush()
        await probe.flush()
        assert seen.pending_msgs == 0
        with pytest.raises(BucketNotFoundError):
            await probe.jetstream(timeout=1).key_value(subjects.bucket(ORG_B, "work"))
        names = [s.config.name for s in await probe.jetstream().streams_info()]
        assert names and all(ORG_A in name for name in names) and not any(ORG_B in name for name in names)


async def test_a_station_cannot_speak_or_write_as_another_station(
        server: EmbeddedNats, tenancy: Tenancy, org_a: OrgAccount) -> None:
    async with connected(server.url, tenancy.issue_station_creds(org_a, "s1"), inbox_prefix="_INBOX_s1") as (
            s1, observed), connected(server.url, tenancy.issue_admin_creds(org_a)) as (admin, _):
        to_s2 = await admin.subscribe(subjects.agent_invoke(ORG_A, "s2").replace(".agent.invoke", ".>"))
        await admin.flush()
        # Publishing on s2's subjects is refused and nothing is delivered. (That its own broadcasts flow is shown
        # by the full-runtime test above, where a station heartbeats with these permissions.)
        await s1.publish(subjects.work_assign(ORG_A, "s2"), b"forged assignment")
        await s1.publish(subjects.agent_invoke(ORG_A, "s2"), b"forged invoke")
        await observed.wait_for('publish to "lattice.v1.orga.station.s2.work.assign"')
        await observed.wait_for('publish to "lattice.v1.orga.station.s2.agent.invoke"')
        # Fence: s1's flush returns once the server handled its publishes; admin's, once anything routed arrived.
        await s1.flush()
        await admin.flush()
        assert to_s2.pending_msgs == 0

        # Presence records: s1 writes its own key, not s2's.
        admin_kv = await admin.jetstream().key_value(subjects.bucket(ORG_A, "stations"))
        await admin_kv.put("s2", b"the real s2")
        s1_kv = await s1.jetstream(timeout=0.5).key_value(subjects.bucket(ORG_A, "stations"))
        assert await s1_kv.put("s1", b"me") > 0
        with pytest.raises(nats.errors.TimeoutError):
            await s1_kv.put("s2", b"forged s2")
        with pytest.raises(nats.errors.TimeoutError):
            await s1_kv.delete("s2")
        await observed.wait_for('publish to "$kv.lattice-orga-stations.s2"')
        assert (await admin_kv.get("s2")).value == b"the real s2"
        # Nor can it read s2's record through the direct-get API (its own key only).
        with pytest.raises(nats.errors.TimeoutError):
            await s1_kv.get("s2")
        # Agent definitions are read-only for stations.
        agents = await s1.jetstream(timeout=0.5).key_value(subjects.bucket(ORG_A, "agents"))
        with pytest.raises(nats.errors.TimeoutError):
            await agents.put("evil", b"{}")
        # No stream may be created, changed or deleted.
        with pytest.raises(nats.errors.TimeoutError):
            await s1.jetstream(timeout=0.5).delete_stream(f"KV_{subjects.bucket(ORG_A, 'work')}")
        assert "$js.api.stream.delete" in await observed.wait_for("stream.delete")


async def test_a_station_cannot_listen_to_another_station_or_its_replies(
        server: EmbeddedNats, tenancy: Tenancy, org_a: OrgAccount) -> None:
    async with connected(server.url, tenancy.issue_station_creds(org_a, "s1"), inbox_prefix="_INBOX_s1") as (
            s1, observed), \
            connected(server.url, tenancy.issue_station_creds(org_a, "s2"), inbox_prefix="_INBOX_s2") as (s2, _), \
            connected(server.url, tenancy.issue_admin_creds(org_a)) as (admin, _):
        snooped = ("lattice.v1.orga.station.s2.>", "_INBOX_s2.>", "_INBOX.>", "lattice.v1.orga.>", ">")
        snoops = [await s1.subscribe(subject) for subject in snooped]
        for subject in snooped:
            await observed.wait_for(f'subscription to "{subject}"')
        # Traffic that a snoop would catch: a request to s2, s2's JetStream replies, the admin's replies.
        s2_requests = await s2.subscribe(subjects.work_assign(ORG_A, "s2"))
        await s2.flush()
        await s2.jetstream().key_value(subjects.bucket(ORG_A, "work"))
        await admin.jetstream().key_value(subjects.bucket(ORG_A, "work"))
        # Sent until s2 has it: under a loaded full suite the first publish to a just-made subscription was
        # intermittently never delivered (cause not found, see the closing note). What is asserted is isolation:
        # the traffic reached s2 and none of it reached s1's snoops.
        for _ in range(25):
            await admin.publish(subjects.work_assign(ORG_A, "s2"), b"assignment for s2")
            with contextlib.suppress(nats.errors.TimeoutError):
                assert (await s2_requests.next_msg(timeout=0.2)).data == b"assignment for s2"
                break
        else:
            raise AssertionError("s2 never received the admin's message to it")
        await admin.flush()
        await s1.flush()
        assert all(sub.pending_msgs == 0 for sub in snoops)
        # A request to s2 from s1 is refused as well (a timeout, not "no responders").
        with pytest.raises(nats.errors.TimeoutError):
            await s1.request(subjects.agent_invoke(ORG_A, "s2"), b"{}", timeout=0.5)


async def test_the_recovery_paths_of_a_station_are_allowed_too(
        server: EmbeddedNats, tenancy: Tenancy, org_a: OrgAccount) -> None:
    """What a station does off the happy path: re-read its presence record and a work record after a CAS
    conflict, store the large result of a re-run attempt beside the first one's, report a failure, and list many
    large records on start."""
    log_offset = server.log_path.stat().st_size
    async with connected(server.url, tenancy.issue_station_creds(org_a, "s1"), inbox_prefix="_INBOX_s1") as (
            s1, observed), connected(server.url, tenancy.issue_admin_creds(org_a)) as (admin, _):
        admin_state = await OrgState.open(admin, ORG_A, LIMITS, create=False)
        chunk = b"r" * 60_000
        for i in range(200):
            await admin_state.work.put(f"w{i}", chunk)
        state = await OrgState.open(s1, ORG_A, LIMITS, create=False)  # as a station with creds opens it
        await state.stations.create("s1", b"me")
        assert (await state.stations.get("s1")).value == b"me"
        # A record is read the way WorkStore.get reads it: the subject in the request, with a revision floor.
        work_bucket = subjects.bucket(ORG_A, "work")
        read = await direct_last(state.requests, subjects.kv_stream(work_bucket), subjects.kv_key(work_bucket, "w1"),
                                 min_seq=1)
        assert read is not None and read.data == chunk
        assert len(await state.list("work")) == 200
        store = WorkStore(state)
        refs = {}
        for attempt in ("first", "second"):  # a re-run attempt stores beside the first, never over it
            _, refs[attempt] = await store.store_result("w1", attempt, attempt * 40_000)
        results = await admin.jetstream().object_store(results_bucket(ORG_A))
        for attempt, ref in refs.items():
            assert ref == f"obj://{results_bucket(ORG_A)}/w1/{attempt}"
            assert (await results.get(f"w1/{attempt}")).data == encode_payload(attempt * 40_000)
        await s1.publish(subjects.work_update(ORG_A, "w1", "progress"), b"{}")
        await s1.flush()
    assert observed.violations() == []
    assert "Violation" not in server_log_since(server, log_offset)


async def test_a_station_cannot_aim_the_server_at_another_station_nor_wipe_or_fake_state(
        server: EmbeddedNats, tenancy: Tenancy, org_a: OrgAccount) -> None:
    """The holes a station's creds once had, tried as an attacker would: a push consumer whose deliver subject is
    another station's assignment subject (the server does not check it against the creator's permissions, so the
    station may create no consumer at all), a purge of the results store or the journal in one request, a fake
    record on ``work.{id}.record`` for a waiter, a cancel or an assignment sent to another station."""
    async with connected(server.url, tenancy.issue_station_creds(org_a, "s1"), inbox_prefix="_INBOX_s1") as (
            s1, observed), connected(server.url, tenancy.issue_admin_creds(org_a)) as (admin, _):
        aimed = await admin.subscribe(subjects.work_assign(ORG_A, "s2"))
        waiter = await admin.subscribe(subjects.work_update(ORG_A, "w1", "record"))
        await admin.flush()
        work_stream = subjects.kv_stream(subjects.bucket(ORG_A, "work"))
        for stream in (work_stream, subjects.kv_stream(subjects.bucket(ORG_A, "agents"))):
            consumer = {"stream_name": stream, "config": {"deliver_subject": subjects.work_assign(ORG_A, "s2"),
                                                          "deliver_policy": "all", "ack_policy": "none"}}
            with pytest.raises(nats.errors.TimeoutError):
                await s1.request(subjects.js_consumer_create(stream), json.dumps(consumer).encode(), timeout=0.5)
        for stream in (subjects.object_stream(results_bucket(ORG_A)), subjects.journal_stream(ORG_A), work_stream):
            with pytest.raises(nats.errors.TimeoutError):
                await s1.request(subjects.js_stream_purge(stream), b"{}", timeout=0.5)
            await observed.wait_for(f'publish to "{subjects.js_stream_purge(stream)}"')
        await s1.publish(subjects.work_update(ORG_A, "w1", "record"), b'{"forged": "record"}')
        await s1.publish(subjects.work_cancel(ORG_A, "s2"), b'{"work_id": "w1"}')
        await observed.wait_for('publish to "lattice.v1.orga.work.w1.record"')
        await observed.wait_for('publish to "lattice.v1.orga.station.s2.work.cancel"')
        await s1.flush()
        await admin.flush()
        assert aimed.pending_msgs == 0 and waiter.pending_msgs == 0
        info = await admin.jetstream().stream_info(work_stream)
        assert info.state.consumer_count == 0

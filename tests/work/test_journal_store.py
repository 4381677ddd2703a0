"""Run journals in JetStream, on a real nats-server: appends chained by compare-and-set (a superseded attempt
cannot add to a run another attempt took over), large entries through the object store, both bounds of a run
(entries, refused by the server; bytes, by the writer) with an error that says what to change, and the journal
deleted with its record."""

from __future__ import annotations

import dataclasses

import pytest

from station_runtime.client import LatticeClient
from station_runtime.contract.messages import ErrorCode, JournalKind, WorkPhase, WorkRecord, utcnow
from station_runtime.contract.specs import WorkItemSpec
from station_runtime.executors import AgentFailure
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.state import OrgState
from station_runtime.work.journal import JournalConflict, JournalStore
from station_runtime.work.store import WorkStore
from tests.support.limits import TEST_LIMITS
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


def record(work_id: str, attempt: int, attempt_id: str) -> WorkRecord:
    now = utcnow()
    return WorkRecord(org="o", work_id=work_id, spec=WorkItemSpec(agent="a", input="x"), phase=WorkPhase.RUNNING,
                      attempt=attempt, attempt_id=attempt_id, station_id="s1", created_at=now, updated_at=now)


async def test_a_later_attempt_takes_the_journal_over_and_fences_the_earlier_one(client: LatticeClient) -> None:
    journals = JournalStore(await client.state())
    first = await journals.open(record("w1", 1, "a1"), "s1", resume=False)
    await first.append(JournalKind.TURN, turn=1, text="calling", tool_calls=[{"id": "c", "name": "t",
                                                                             "arguments": {}}])
    await first.append(JournalKind.CALL, turn=1, call_id="c", call_index=1, name="t", key="w1/1")
    second = await journals.open(record("w1", 2, "a2"), "s2", resume=True)
    assert [e.kind for e in second.entries] == [JournalKind.TURN, JournalKind.CALL]
    with pytest.raises(JournalConflict, match="superseded"):
        await first.append(JournalKind.RESULT, turn=1, call_id="c", text="late")
    await second.append(JournalKind.RESULT, turn=1, call_id="c", text="mine")
    entries = await client.journal("w1")
    assert [(e.n, e.kind, e.attempt) for e in entries] == [
        (1, JournalKind.TURN, 1), (2, JournalKind.CALL, 1), (3, JournalKind.ATTEMPT, 2), (4, JournalKind.RESULT, 2)]
    assert entries[2].resumed_at == 2 and entries[3].text == "mine"


async def test_a_large_entry_is_kept_in_the_object_store_and_read_back_whole(client: LatticeClient) -> None:
    journals = JournalStore(await client.state())
    writer = await journals.open(record("w2", 1, "a1"), "s1", resume=False)
    text = "lorem ipsum " * 20_000  # 240 KB: over the inline limit
    await writer.append(JournalKind.TURN, turn=1, text=text)
    entries, _, size = await journals.read("w2")
    assert entries[0].text == text and entries[0].ref is None  # the stub is replaced by the whole entry
    assert size < 1024  # the stream holds the stub only


async def test_a_run_past_its_journal_bounds_fails_with_what_to_change(nats_url: str, org: str) -> None:
    limits = dataclasses.replace(TEST_LIMITS, journal_max_entries_per_run=3, journal_max_run_bytes=4000)
    async with LatticeClient(NatsSettings(url=nats_url), org, create_state=True, limits=limits) as client:
        state = await client.state()
        journals = JournalStore(state)
        writer = await journals.open(record("w3", 1, "a1"), "s1", resume=False)
        for turn in (1, 2, 3):
            await writer.append(JournalKind.TURN, turn=turn, text="x")
        with pytest.raises(AgentFailure) as exc:  # the server refuses a fourth entry on the run's subject
            await writer.append(JournalKind.TURN, turn=4, text="x")
        assert exc.value.code == ErrorCode.LIMIT_EXCEEDED and "at most 3 entries per run" in str(exc.value)
        other = await journals.open(record("w4", 1, "a1"), "s1", resume=False)
        with pytest.raises(AgentFailure, match="would exceed 4000 bytes") as exc:
            await other.append(JournalKind.TURN, turn=1, text="y" * 5000)
        assert exc.value.code == ErrorCode.LIMIT_EXCEEDED
        assert await client.journal("w4") == []  # nothing of the refused entry was stored


async def test_a_journal_is_deleted_with_its_record(client: LatticeClient) -> None:
    from station_runtime.work.controller import WorkController

    journals = JournalStore(await client.state())
    submitted = await client.submit(WorkItemSpec(agent="nobody", input="x"), work_id="w5")
    writer = await journals.open(record("w5", 1, "a1"), "s1", resume=False)
    await writer.append(JournalKind.TURN, turn=1, text="x")
    async with WorkController(await client.org_work(), interval_s=0.2):
        store: WorkStore = await client.work_store()
        await store.state.work.delete(submitted.work_id)
        await eventually(lambda: _empty(client, "w5"), timeout_s=10, what="the journal to be deleted")


async def _empty(client: LatticeClient, work_id: str) -> bool:
    return await client.journal(work_id) == []


async def test_an_org_prepared_before_journals_reads_as_no_journal(nats_url: str, org: str) -> None:
    async with LatticeClient(NatsSettings(url=nats_url), org, create_state=True, limits=TEST_LIMITS) as client:
        state: OrgState = await client.state()
        await state.js.delete_stream(f"lattice-{org}-journal")
        assert await client.journal("w6") == []

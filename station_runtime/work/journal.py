"""Run journals in JetStream: the org's ``journal`` stream, one subject per work id, appends chained by
compare-and-set, large entries in the results object store.

Why a stream and not the work record: the record is rewritten whole on every change, so a history kept in it
would cost O(history) per turn; a stream append costs O(entry), and the server bounds each run's entries (discard
new per subject) and the whole. Why compare-and-set on every append (``Nats-Expected-Last-Subject-Sequence``):
a superseded attempt still running somewhere (a partitioned station, a kill that has not landed yet) must not add
to the run's history. A new attempt first appends an ``attempt`` entry at the end it read; from then on any
append of the old attempt fails its compare-and-set and the old attempt stops, having written nothing more (it
cannot even start another tool call: a call entry goes in before the call).

A journal lives as long as its record: the controller deletes it when the record expires (:meth:`purge`), and
the stream's age bound catches any it missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from ..contract import subjects
from ..contract.codec import decode, encode
from ..contract.errors import DecodeError
from ..contract.messages import JOURNAL_INLINE_BYTES, ErrorCode, JournalEntry, JournalKind, WorkRecord
from ..contract.subjects import Header
from ..errors import LatticeError, StoreFullError
from ..executors import AgentFailure
from ..natsio.listing import read_subject
from ..natsio.requests import direct_last, js_append
from ..natsio.retry import is_transient, retry_transient
from ..natsio.state import OrgState

log = logging.getLogger(__name__)

#: How often a new attempt re-reads the journal when an old attempt appended between its read and its marker.
MAX_TAKEOVER_TRIES = 5


class JournalConflict(LatticeError):
    """Someone else appended to the run's journal: this attempt is superseded and must stop."""


class JournalStore:
    """The org's run journals."""

    def __init__(self, state: OrgState) -> None:
        self.state = state
        self.stream = subjects.journal_stream(state.org)
        self._results_bucket = subjects.results_bucket(state.org)

    def subject(self, work_id: str) -> str:
        return subjects.journal(self.state.org, work_id)

    async def read(self, work_id: str) -> tuple[list[JournalEntry], int, int]:
        """The run's entries (large ones loaded from the object store), the sequence of the last one (0: none)
        and the bytes they take."""
        limit = self.state.limits.journal_max_entries_per_run
        try:
            messages = await read_subject(self.state.inbox, self.stream, self.subject(work_id), limit=limit)
        except nats.errors.NoRespondersError:  # no journal stream (an org prepared by an older version)
            return [], 0, 0
        entries: list[JournalEntry] = []
        last, size = 0, 0
        for msg in messages:
            headers = msg.headers or {}
            last = int(headers.get(Header.SEQUENCE, "0")) or last
            size += len(msg.data)
            entry = await self._entry(work_id, msg)
            if entry is not None:
                entries.append(entry)
        return entries, last, size

    async def _entry(self, work_id: str, msg: Msg) -> JournalEntry | None:
        try:
            entry = decode(msg.data, JournalEntry, max_bytes=self.state.limits.max_value_bytes)
            if entry.ref is not None:
                full = decode(await self._load_large(entry.ref), JournalEntry,
                              max_bytes=self.state.limits.journal_max_run_bytes)
                if (full.work_id, full.n) != (entry.work_id, entry.n):
                    raise DecodeError(f"object {entry.ref} holds entry {full.n} of {full.work_id}", b"")
                entry = full
        except DecodeError as exc:
            # Not skipped silently: the gap it leaves stops the replay (JournalBroken) with this reason logged.
            log.warning("journal of %s: unreadable entry: %s", work_id, exc)
            return None
        except (nats.js.errors.Error, ValueError) as exc:
            log.warning("journal of %s: a large entry could not be loaded: %s", work_id, exc)
            return None
        return entry if entry.work_id == work_id else None

    async def append(self, work_id: str, data: bytes, *, last: int, n: int, attempt_id: str) -> int:
        """Append ``data`` (entry ``n`` of ``attempt_id``) if the journal's last sequence is ``last``; its sequence.
        Through a NATS outage the append is retried; if a retry finds the compare-and-set failed because the
        first try landed after all, that counts as done."""
        unsure = False

        async def once() -> int:
            nonlocal unsure
            try:
                return await js_append(self.state.requests, self.subject(work_id), data, last=last,
                                       store=self.stream)
            except nats.js.errors.KeyWrongLastSequenceError:
                if unsure and (landed := await self._last(work_id, min_seq=last + 1)) is not None:
                    entry, seq = landed
                    if entry.n == n and entry.attempt_id == attempt_id:
                        return seq
                raise JournalConflict(f"the journal of {work_id} moved on (another attempt wrote to it): "
                                      "this attempt is superseded") from None
            except Exception as exc:  # looked at, then re-raised
                if is_transient(exc):
                    unsure = True  # the append may have landed
                raise

        return await retry_transient(once, what=f"work {work_id}: journal append", deadline_s=120.0)

    async def _last(self, work_id: str, *, min_seq: int) -> tuple[JournalEntry, int] | None:
        """The run's last entry, from a replica that has at least ``min_seq`` of the stream (the CAS that failed
        says the journal went past the sequence it expected)."""
        msg = await direct_last(self.state.requests, self.stream, self.subject(work_id), min_seq=min_seq)
        if msg is None:
            return None
        try:
            entry = decode(msg.data, JournalEntry, max_bytes=self.state.limits.max_value_bytes)
        except DecodeError:
            return None
        return entry, int((msg.headers or {}).get(Header.SEQUENCE, "0"))

    async def store_large(self, entry: JournalEntry, data: bytes) -> str:
        """Keep a large entry in the object store, under its run, number and attempt; its reference."""
        name = f"journal/{entry.work_id}/{entry.n}/{entry.attempt_id}"
        store = await self.state.results()
        await store.put(name, data)
        return f"obj://{self._results_bucket}/{name}"

    async def _load_large(self, ref: str) -> bytes:
        """A large entry's bytes: the object's metadata (its last message), then its chunks by batch direct get
        (no consumer: a station may read the store, not create consumers on it)."""
        store = await self.state.results()
        info = await store.get_info(self._object_name(ref))
        chunks = await read_subject(self.state.inbox, subjects.object_stream(self._results_bucket),
                                    f"$O.{self._results_bucket}.C.{info.nuid}", limit=(info.chunks or 0) + 1)
        data = b"".join(msg.data for msg in chunks)
        if info.size is not None and len(data) != info.size:
            raise ValueError(f"{ref}: read {len(data)} of its {info.size} bytes")
        return data

    def _object_name(self, ref: str) -> str:
        prefix = f"obj://{self._results_bucket}/journal/"
        if not ref.startswith(prefix):
            raise ValueError(f"journal reference {ref!r} is not in this org's results store")
        return ref[len(f"obj://{self._results_bucket}/"):]

    async def purge(self, work_id: str) -> None:
        """Delete the run's journal (its record is gone). The org's admin only: stations may not purge."""
        request = json.dumps({"filter": self.subject(work_id)}).encode()
        msg = await self.state.requests.request(subjects.js_stream_purge(self.stream), request, timeout_s=5.0)
        answer: dict[str, Any] = json.loads(msg.data or b"{}")
        if (error := answer.get("error")) is not None:
            raise nats.js.errors.APIError.from_error(error)

    async def open(self, record: WorkRecord, station_id: str, *, resume: bool) -> RunJournalWriter:
        """The journal of the attempt ``record`` names. ``resume``: the run may have a journal already (a later
        attempt, a restarted station): read it and take it over with an ``attempt`` entry, so that the attempt
        before can append nothing more. Otherwise the run starts one."""
        assert record.attempt_id is not None
        writer = RunJournalWriter(self, record, station_id)
        if not resume:
            return writer
        for _ in range(MAX_TAKEOVER_TRIES):
            entries, last, size = await self.read(record.work_id)
            writer.found(entries, last, size)
            try:
                await writer.append(JournalKind.ATTEMPT, resumed_at=len(entries))
                return writer
            except JournalConflict:
                continue  # the attempt before appended meanwhile: read again
        raise JournalConflict(f"the journal of {record.work_id} kept moving while attempt {record.attempt} took "
                              "it over: another attempt is still writing")


class RunJournalWriter:
    """One attempt's view of its run's journal (:class:`~station_runtime.executors.journal.RunJournal`)."""

    def __init__(self, store: JournalStore, record: WorkRecord, station_id: str) -> None:
        assert record.attempt_id is not None
        self._store = store
        self.work_id = record.work_id
        self.attempt = record.attempt
        self.attempt_id = record.attempt_id
        self.station_id = station_id
        #: What the attempt found (the entries the loop replays); entries it appends are not added here.
        self.entries: list[JournalEntry] = []
        self._n = 0
        self._last = 0
        self._bytes = 0
        self._lock = asyncio.Lock()

    def found(self, entries: list[JournalEntry], last: int, size: int) -> None:
        self.entries = entries
        self._n = entries[-1].n if entries else 0
        self._last, self._bytes = last, size

    async def append(self, kind: JournalKind, **fields: Any) -> JournalEntry:
        limits = self._store.state.limits
        async with self._lock:  # one chain: concurrent tool calls append one after the other
            entry = JournalEntry(work_id=self.work_id, n=self._n + 1, kind=kind, attempt=self.attempt,
                                 attempt_id=self.attempt_id, station_id=self.station_id, **fields)
            data = encode(entry)
            size = len(data)
            if self._bytes + size > limits.journal_max_run_bytes:
                raise AgentFailure(f"the journal of {self.work_id} would exceed {limits.journal_max_run_bytes} "
                                   "bytes (StateLimits.journal_max_run_bytes): lower the agent's maxTurns or "
                                   "maxToolCalls, or raise the bound", ErrorCode.LIMIT_EXCEEDED)
            try:
                if size > JOURNAL_INLINE_BYTES:
                    ref = await self._store.store_large(entry, data)
                    data = encode(JournalEntry(work_id=self.work_id, n=entry.n, kind=kind, attempt=self.attempt,
                                               attempt_id=self.attempt_id, station_id=self.station_id,
                                               turn=entry.turn, call_id=entry.call_id, ref=ref))
                self._last = await self._store.append(self.work_id, data, last=self._last, n=entry.n,
                                                      attempt_id=self.attempt_id)
            except StoreFullError as exc:
                if "per subject" not in str(exc):  # the whole journal stream is full
                    raise AgentFailure(str(exc), ErrorCode.LIMIT_EXCEEDED) from exc
                # This run's bound, refused by the server (discard new per subject).
                raise AgentFailure(f"the journal of {self.work_id} is full (at most "
                                   f"{limits.journal_max_entries_per_run} entries per run, "
                                   "StateLimits.journal_max_entries_per_run): lower the agent's maxTurns or "
                                   "maxToolCalls, or raise the bound", ErrorCode.LIMIT_EXCEEDED) from exc
            self._n = entry.n
            self._bytes += size
            return entry


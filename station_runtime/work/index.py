"""A live index of an org's work, fed by one watch of the work bucket: what the witness (and the operator's
WorkItem mirror) need, at a cost that follows what changes, not what is stored.

* ``live``: every unfinished record (the witness's whole working set), and per station the work it holds;
* a timer heap: when each unfinished record next needs a look (:func:`.policy.next_check`: a deadline, a
  backoff, the end of a grace period), so that an idle lattice costs the witness nothing until something is due.
  Finished records are not kept at all: the server deletes each when the org's retention is over (the TTL of
  the write that finished it), so neither the witness's memory nor its work grows with the history;
* listeners, told of every record version as it arrives (the WorkItem mirror).

A record that cannot be decoded (written by a newer or broken writer, or by hand) is reported once per revision
to ``on_undecodable`` (the witness quarantines it), never re-read in a loop. The watch is rebuilt after any failure
and re-delivers every current value; the index reconciles that snapshot with what it had.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Final

from pydantic import BaseModel, ConfigDict, ValidationError

from ..contract.codec import decode
from ..contract.errors import DecodeError
from ..contract.messages import WorkPhase, WorkRecord, utcnow
from ..natsio.listing import KvItem
from ..natsio.state import OrgState
from ..tasks import stop_task
from ..telemetry import metrics
from .policy import WitnessPolicy, next_check
from .store import Versioned

log = logging.getLogger(__name__)
P = WorkPhase

#: A look is scheduled this long after the instant a deadline passes: the witness's decisions compare with ">".
SLACK: Final = timedelta(milliseconds=1)
HOLDING = (P.ASSIGNED, P.RUNNING)
WAITING = (P.PENDING, P.SCHEDULING, P.UNSCHEDULABLE)
#: Undecodable records reported (once per revision) remembered at most: bounds the map.
MAX_REPORTED: Final = 10_000

Listener = Callable[[Versioned], None]


class _Peek(BaseModel):
    """The two fields the index needs of a record to know it may drop it: parsed without validating the rest
    (a quarter of a full decode), so finished records (most of an org's history, and every item's last write)
    cost next to nothing."""

    model_config = ConfigDict(extra="ignore")

    phase: WorkPhase
    parent_id: str | None = None
Undecodable = Callable[[str, int, bytes, DecodeError], Awaitable[None]]


class WorkIndex:
    def __init__(self, state: OrgState, policy: WitnessPolicy, *, on_undecodable: Undecodable | None = None) -> None:
        self._state = state
        self.policy = policy
        self.on_undecodable = on_undecodable
        #: Told of every record the store deleted (its retention ended, or someone deleted it): the witness
        #: deletes what lives beside it (the run's journal).
        self.on_deleted: Callable[[str], Awaitable[None]] | None = None
        #: Unfinished records, by work id.
        self.live: dict[str, Versioned] = {}
        #: Work ids each station holds (Assigned or Running there).
        self.by_station: dict[str, set[str]] = {}
        #: Finished records seen (in the last snapshot, and since): counted, not kept.
        self.finished = 0
        self.listeners: list[Listener] = []
        #: Finished records the listeners want decoded (by work id); others are only counted.
        self.wanted: Callable[[str], bool] = lambda _: False
        #: (when, tie-break, work id, revision): a record's next look. Stale entries (the record changed since)
        #: are skipped when they come up.
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._seq = itertools.count()
        #: Set when something became due earlier than the witness planned to wake.
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()
        self.healthy = False
        #: Decoded versions (the cost the index has: one decode per stored version).
        self.decoded = 0
        self._reported: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self, timeout_s: float = 30.0) -> None:
        self._task = asyncio.create_task(self._run(), name="work-index")
        async with asyncio.timeout(timeout_s):
            await self.ready.wait()

    def rewatch(self) -> None:
        """Rebuild the watch (after a reconnect): a fresh snapshot follows."""
        self.healthy = False
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._run(), name="work-index")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        await self._state.follow("work", self._on_entry, what="work index", on_snapshot=self._on_snapshot,
                                 on_failure=self._failed)

    def _failed(self) -> None:
        self.healthy = False

    # --- what the witness asks ---------------------------------------------------------------------------------

    def get(self, work_id: str) -> Versioned | None:
        return self.live.get(work_id)

    def due(self, now: datetime | None = None) -> list[Versioned]:
        """The unfinished records whose next look is due, each once (the current version only); they leave the
        heap. A record that still needs looks later is put back by :meth:`recheck` or by its next change."""
        now = now or utcnow()
        due: list[Versioned] = []
        seen: set[str] = set()
        while self._heap and self._heap[0][0] <= now:
            _, _, work_id, revision = heapq.heappop(self._heap)
            current = self.live.get(work_id)
            if work_id not in seen and current is not None and current.revision == revision:
                seen.add(work_id)
                due.append(current)
        return due

    def next_due(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def recheck(self, versioned: Versioned, when: datetime | None = None, *,
                not_before: datetime | None = None) -> None:
        """Look at ``versioned`` again at ``when`` (default: its own next check, but not before ``not_before``)
        if it is still current."""
        record = versioned.record
        when = when or next_check(record, self.policy)
        if when is not None and not_before is not None:
            when = max(when, not_before)
        if when is not None:
            heapq.heappush(self._heap, (when + SLACK, next(self._seq), record.work_id, versioned.revision))

    def held_by(self, station_id: str) -> list[Versioned]:
        return [self.live[w] for w in self.by_station.get(station_id, ()) if w in self.live]

    def holding_stations(self) -> list[str]:
        return [s for s, ids in self.by_station.items() if ids]

    def in_phase(self, phase: WorkPhase) -> list[Versioned]:
        return [v for v in self.live.values() if v.record.phase == phase]

    # --- the watch ----------------------------------------------------------------------------------------------

    async def _on_snapshot(self, seen: set[str]) -> None:
        for gone in set(self.live) - seen:
            self._forget(gone)
        self.healthy = True
        self.ready.set()
        self.changed.set()

    async def _on_entry(self, entry: KvItem, initial: bool) -> None:
        key = entry.key
        revision = entry.revision
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._forget(key)
            if self.on_deleted is not None and not initial:
                await self.on_deleted(key)
            return
        try:
            peek = _Peek.model_validate_json(entry.value)
        except ValidationError:
            peek = None  # the full decode below says what is wrong
        if peek is not None and peek.phase.terminal and not self.wanted(key):
            self._count_finished(key, peek.phase)
            self._finished(key, peek.parent_id)
            return
        try:
            record = decode(entry.value, WorkRecord)
        except DecodeError as exc:
            await self._undecodable(key, revision, entry.value, exc)
            return
        self.decoded += 1
        if not record.phase.terminal and key not in self.live and self.ready.is_set():
            # A key never seen, after the first snapshot: new work (whoever submitted it, from whatever process).
            metrics.WORK_SUBMITTED.add(1, {"org": self._state.org, "agent": record.spec.agent or ""})
        self.put(Versioned(record, revision))

    def _count_finished(self, key: str, phase: WorkPhase) -> None:
        """Work we held as unfinished has finished: counted once per controller (records finished before we ever
        saw them, at start-up, are history and not counted)."""
        if key in self.live:
            metrics.WORK_FINISHED.add(1, {"org": self._state.org, "phase": phase.value.lower()})

    def waiting_age(self) -> list[tuple[float, dict[str, str]]]:
        """Seconds the oldest work still waiting for a station (pending, scheduling, unschedulable) has waited
        since it was created; 0 when none waits. A scrape reads it (off the loop: one copy of the values)."""
        now = utcnow()
        oldest = min((v.record.created_at for v in list(self.live.values()) if v.record.phase in WAITING),
                     default=None)
        return [(0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0), {"org": self._state.org})]

    def depth(self) -> list[tuple[float, dict[str, str]]]:
        """The unfinished work by phase (every unfinished phase, zeros too: a query sees an empty queue as 0).
        Read by a metrics scrape, off the event loop: one copy of the values, then counted."""
        counts = dict.fromkeys((p for p in WorkPhase if not p.terminal), 0)
        for versioned in list(self.live.values()):
            counts[versioned.record.phase] += 1
        return [(n, {"org": self._state.org, "phase": p.value.lower()}) for p, n in counts.items()]

    def _finished(self, key: str, parent_id: str | None) -> None:
        """A record finished (or was finished when we first saw it): it leaves the index; its workflow, if any, is
        looked at now."""
        self._forget(key)
        self.finished += 1
        if parent_id is not None and (parent := self.live.get(parent_id)) is not None:
            self.recheck(parent, utcnow())

    def put(self, versioned: Versioned) -> None:
        """Take a version we learned of (from the watch, or from our own write) unless we know a later one."""
        record, key = versioned.record, versioned.record.work_id
        current = self.live.get(key)
        if current is not None and current.revision >= versioned.revision:
            return
        if record.phase.terminal:
            # Counted by whoever sees the live record go terminal first: the watch, or the witness's own write
            # (which makes the watch's later copy of it a record no longer live, not counted again).
            self._count_finished(key, record.phase)
        self._forget(key)
        if record.phase.terminal:
            self.finished += 1
        else:
            self.live[key] = versioned
            if record.phase in HOLDING and record.station_id:
                self.by_station.setdefault(record.station_id, set()).add(key)
        self.recheck(versioned)
        if record.parent_id is not None and (parent := self.live.get(record.parent_id)) is not None:
            # A workflow step changed: its workflow may move on now.
            self.recheck(parent, utcnow())
        if record.is_workflow and not record.phase.terminal:
            self.recheck(versioned, utcnow())
        if self._heap and self._heap[0][2] == key:
            self.changed.set()
        for listener in list(self.listeners):
            listener(versioned)

    def _forget(self, key: str) -> None:
        current = self.live.pop(key, None)
        if current is not None and (station := current.record.station_id) is not None:
            held = self.by_station.get(station)
            if held is not None:
                held.discard(key)
                if not held:
                    del self.by_station[station]

    async def _undecodable(self, key: str, revision: int, data: bytes, exc: DecodeError) -> None:
        self._forget(key)
        if self._reported.get(key) == revision:
            return
        if len(self._reported) >= MAX_REPORTED:
            self._reported.clear()
        self._reported[key] = revision
        log.warning("work record %r (revision %d) cannot be decoded: %s", key, revision, exc)
        if self.on_undecodable is not None:
            await self.on_undecodable(key, revision, data, exc)



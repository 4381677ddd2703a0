"""A live view of the org's stations for auctioneers and witnesses: the ``stations`` bucket followed by a watch,
so that an auction knows whom to expect without reading the registry each time.

Liveness is judged by heartbeat age, not by the watch: a controller that lost its own NATS connection sees no
updates, and must not conclude that every station died (wasmCloud's lesson). While disconnected it reports
``healthy = False`` and the witness holds back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from ..contract.codec import decode
from ..contract.errors import DecodeError
from ..contract.messages import StationRecord, utcnow
from ..natsio.listing import KvItem
from ..natsio.state import OrgState
from ..routing import is_live
from ..tasks import stop_task
from .policy import Holding

log = logging.getLogger(__name__)


class StationDirectory:
    def __init__(self, state: OrgState) -> None:
        self._state = state
        #: Called with the record of every station that joins (or restarts) after the first snapshot.
        self.on_join: list[Callable[[StationRecord], Awaitable[None]]] = []
        self.records: dict[str, StationRecord] = {}
        #: Bumped on every change of ``records``: lets an auctioneer cache what it derives from them.
        self.version = 0
        self.last_join: datetime | None = None
        self.healthy = False
        #: When the current view was (re)built, and whether it follows a lost one (our connection was down, NATS
        #: restarted): then a station seen by an older heartbeat may not have had the chance to beat since.
        self.healthy_since: datetime | None = None
        self.resumed = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._holdings: tuple[int, dict[str, Holding]] = (-1, {})

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="station-directory")
        async with asyncio.timeout(timeout_s):
            await self._ready.wait()

    def rewatch(self) -> None:
        self.healthy = False
        self.resumed = True
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._run(), name="station-directory")

    def disconnected(self) -> None:
        self.healthy = False
        self.resumed = True

    async def stop(self) -> None:
        await stop_task(self._task)

    def live(self, now: datetime | None = None) -> list[StationRecord]:
        now = now or utcnow()
        return [r for r in self.records.values() if is_live(r, now)]

    def live_ids(self, now: datetime | None = None) -> set[str]:
        return {r.station_id for r in self.live(now)}

    def holdings(self) -> dict[str, Holding]:
        """What each station's last heartbeat said it holds (derived once per change of the directory)."""
        if self._holdings[0] != self.version:
            # Only stations that list what they hold: an older one's empty list would say it holds nothing.
            self._holdings = (self.version, {s: Holding(r.last_heartbeat, frozenset(r.holding), r.started_at)
                                             for s, r in self.records.items() if r.lists_holding})
        return self._holdings[1]

    async def _run(self) -> None:
        await self._state.follow("stations", self._on_entry, what="station directory", on_snapshot=self._on_snapshot,
                                 on_failure=self.disconnected)

    async def _on_snapshot(self, seen: set[str]) -> None:
        for gone in set(self.records) - seen:
            self.records.pop(gone, None)
            self.version += 1
        self.healthy = True
        self.healthy_since = utcnow()
        self._ready.set()

    async def _on_entry(self, entry: KvItem, initial: bool) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.records.pop(entry.key, None)
            self.version += 1
            return
        try:
            record = decode(entry.value, StationRecord)
        except DecodeError as exc:
            log.warning("ignoring malformed station record %r: %s", entry.key, exc)
            return
        previous = self.records.get(entry.key)
        self.records[entry.key] = record
        self.version += 1
        # A station that restarted, or whose beats stopped long enough to count it out (its bucket's leader was
        # being elected, a partition) and came back: capacity that unschedulable work may be waiting for.
        if previous is None or previous.started_at != record.started_at or not is_live(previous):
            self.last_join = utcnow()
            if not initial:
                for listener in list(self.on_join):
                    await listener(record)

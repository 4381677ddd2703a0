"""The auctioneer's memory of the work it placed: what each station has from us that we have not seen finish, and
which station last finished our work. It is what ranks stations between their heartbeats.

The registry's load is as old as the station's last heartbeat; a burst of submissions would all pick the same
"least loaded" station without this. A placement is counted from the moment a station is picked until its outcome
is seen (:meth:`InFlight.finished`, called when the submitter's wait returns) or, for submitters that never wait,
until two of the station's heartbeats have passed (by then its own load counts the work if it still runs it).
Among equally loaded stations the one that last finished our work goes first: on a small machine a station
process woken from idle is far slower for its first message than a warm one (one item at a time on 3 stations
took 1.47 ms spread, 1.17 ms on one), and a station with a free slot runs the work at once either way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Final

from ..contract.messages import StationRecord
from . import scoring

#: Placements remembered until their outcome is seen (the oldest is forgotten first): bounds memory for
#: submitters that never wait.
MAX_PLACED: Final = 10_000

RankKey = Callable[[StationRecord], tuple[float, float, str]]


class InFlight:
    def __init__(self, *, max_placed: int = MAX_PLACED, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_placed = max_placed
        self._clock = clock
        #: work id -> (station, when we stop counting it); oldest first.
        self._placed: dict[str, tuple[str, float]] = {}
        self._count: Counter[str] = Counter()
        self._last_used: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._placed)

    def count(self, station_id: str) -> int:
        return self._count[station_id]

    def place(self, work_id: str, station_id: str, horizon_s: float) -> None:
        """Count ``work_id`` on ``station_id`` for at most ``horizon_s`` (placing it again moves it)."""
        self.unplace(work_id)
        if len(self._placed) >= self.max_placed:
            self.unplace(next(iter(self._placed)))
        self._placed[work_id] = (station_id, self._clock() + horizon_s)
        self._count[station_id] += 1

    def unplace(self, work_id: str) -> str | None:
        """Stop counting ``work_id`` (not placed after all); the station it was counted on, if any."""
        placed = self._placed.pop(work_id, None)
        if placed is None:
            return None
        station_id = placed[0]
        self._count[station_id] -= 1
        if not self._count[station_id]:
            del self._count[station_id]
        return station_id

    def finished(self, work_id: str) -> None:
        """The outcome of ``work_id`` was seen: its station has the slot back and is the one used last.
        Idempotent; a no-op for work placed elsewhere."""
        station_id = self.unplace(work_id)
        if station_id is not None:
            self._last_used[station_id] = self._clock()

    def forget_station(self, station_id: str) -> None:
        """A station left the registry: its last use no longer ranks anything (bounds the map)."""
        self._last_used.pop(station_id, None)

    def expire(self) -> None:
        now = self._clock()
        while self._placed:
            work_id, (_, until) = next(iter(self._placed.items()))
            if until > now:
                return
            self.unplace(work_id)

    def rank_key(self, work_id: str) -> RankKey:
        """Least loaded first: the registry's load or, if more, our work there whose outcome we have not seen, per
        capacity; equal ones the station we used last first, then in an order that differs per work item."""
        self.expire()
        last_used, count = self._last_used, self._count

        def key(s: StationRecord) -> tuple[float, float, str]:
            load = max(s.load, count[s.station_id])
            return load / max(s.capacity, 1), -last_used.get(s.station_id, 0.0), scoring.tiebreak(work_id, s.station_id)

        return key

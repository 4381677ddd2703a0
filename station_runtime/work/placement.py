"""Pure placement decisions of the auctioneer: whom to offer new work to, whom to ask in an auction, and what to
say (and do) when nobody takes the work.

No I/O here: the auctioneer (:mod:`.auction`) gathers the stations, the bids and the clock, and these functions
decide. Each is unit-tested without NATS.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..contract.messages import AuctionBid, StationRecord
from ..routing import is_live
from . import scoring
from .inflight import RankKey

#: What a station says when it has no room (``AuctionBid.reason``/``WorkAccept.reason``): the work is not wrong for
#: it, it is busy. Nobody taking work for these reasons is contention, not a fault: the work waits and is placed
#: again without spending a retry.
BUSY_REASONS = ("full", "draining")


@dataclass(frozen=True)
class OfferTarget:
    station_id: str
    #: Take it if a run slot is free or the load is at most this; None: take it if the queue has room.
    max_load: int | None


def offer_target(eligible: Sequence[StationRecord], key: RankKey) -> OfferTarget | None:
    """Whom to offer new work to, and the load up to which it should take it: the first of the ranking.

    Bound: while we believe the runner-up has a free slot, the load we believe it has (scaled to the first's
    capacity), beyond which the runner-up would likely have won the auction; a station that can start the work
    at once always takes it. When we believe every station busy, a queue here is as good as a queue there: no
    bound. The only eligible station gets a plain assignment (it would be the only bidder)."""
    if not eligible:
        return None
    first, *rest = heapq.nsmallest(2, eligible, key=key)
    runner_up = key(rest[0])[0] if rest else 1.0
    return OfferTarget(first.station_id, int(runner_up * first.capacity) if runner_up < 1.0 else None)


def sample(eligible: Sequence[StationRecord], key: RankKey, max_bidders: int | None) -> list[StationRecord]:
    """The ``max_bidders`` first eligible stations of the ranking (all of them when None or few)."""
    if max_bidders is None or len(eligible) <= max_bidders:
        return list(eligible)
    return sorted(eligible, key=key)[:max_bidders]


def contended(bids: Iterable[AuctionBid], asked: Iterable[str]) -> bool:
    """Pure: did every station asked answer, and every one busy (full or draining) rather than unable? A silent
    station may be dead: that is not contention."""
    answers = {b.station_id: b for b in bids}
    asked = set(asked)
    return bool(asked) and asked <= set(answers) and all(
        b.declined and b.reason in BUSY_REASONS for b in answers.values())


def unschedulable_reason(req: scoring.Requirements, *, asked: Iterable[str], bids: Iterable[AuctionBid],
                         waited_s: float, registered: Iterable[StationRecord] = (),
                         now: datetime | None = None) -> str:
    """Pure: why nobody took the work, naming every station asked and what it answered (declined and why, or no
    answer in how long); when nobody was asked, why each registered station was not eligible."""
    reason = f"no station can run it: none bid with {req.describe()}"
    asked = set(asked)
    if asked:
        answered = {b.station_id: b.reason or "declined" for b in bids if b.declined}
        parts = [f"{s}: {why}" for s, why in sorted(answered.items())]
        parts += [f"{s}: no answer in {waited_s:.1f}s" for s in sorted(asked - set(answered))]
        return f"{reason} ({'; '.join(parts)})"
    why = {s.station_id: scoring.ineligibility(s, req, now) for s in registered}
    parts = [f"{sid}: {w}" for sid, w in sorted(why.items()) if w]
    return f"{reason} ({'; '.join(parts)})" if parts else f"{reason} (no station registered)"


def unloadable(req: scoring.Requirements, registered: Iterable[StationRecord],
               now: datetime | None = None) -> str | None:
    """Pure: the agent the work names cannot be loaded by any live station that selects it (every one reports a
    load error, none hosts it): the work can never run until the agent is fixed, so it fails at once, saying
    why. None when some station hosts it, or none has tried."""
    if req.agent is None:
        return None
    errors: dict[str, str] = {}
    for s in registered:
        if not is_live(s, now):
            continue
        if req.agent in s.agents:
            return None
        if req.agent in s.agent_errors:
            errors[s.station_id] = s.agent_errors[req.agent]
    if not errors:
        return None
    detail = "; ".join(f"{sid}: {why}" for sid, why in sorted(errors.items()))
    return f"agent {req.agent!r} cannot be loaded by any station that selects it ({detail}): fix the Agent"

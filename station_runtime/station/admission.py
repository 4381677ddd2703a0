"""Pure: what a station answers to an auction, an offer or an assignment, and which of its agents runs the work.

One set of rules for all three, given what the station knows about itself at that moment (:class:`StationView`):
draining refuses everything, then work meant for another station, work it already runs, work it cannot run at all
(agent, capabilities, labels: :func:`..work.scoring.misfit`), a full queue, and, for an offer, a load above the
offer's bound while no run slot is free. What passes gets a score (:func:`..work.scoring.score`) when it is a bid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from ..work import scoring


@dataclass(frozen=True)
class StationView:
    """The station as it is right now: what it hosts, carries and holds."""

    station_id: str
    draining: bool
    load: int
    capacity: int
    queue_limit: int
    agents: frozenset[str]
    #: Its own capabilities and those of the agents it hosts.
    capabilities: frozenset[str]
    labels: Mapping[str, str]

    @property
    def full(self) -> bool:
        """Every run slot and every queue place is taken."""
        return self.load >= self.capacity + self.queue_limit


@dataclass(frozen=True)
class Verdict:
    #: Why not, in a few words (``"full"``, ``"draining"``, ``"does not host 'x'"``); empty: yes.
    reason: str = ""
    #: The bid, when asked for one and the answer is yes.
    score: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.reason


def judge(view: StationView, req: scoring.Requirements, *, assigned_to: str | None = None, running: bool = False,
          offer_max_load: int | None = None, bid: bool = False) -> Verdict:
    """Pure: the station's answer. ``assigned_to``: the station an assignment names; ``running``: the station
    already runs this work; ``offer_max_load``: an offer's bound; ``bid``: score it (an auction)."""
    if view.draining:
        return Verdict("draining")
    if assigned_to is not None and assigned_to != view.station_id:
        return Verdict(f"assigned to {assigned_to}, not to {view.station_id}")
    if running:
        return Verdict("already running")
    if (why := scoring.misfit(req, agents=view.agents, capabilities=view.capabilities, labels=view.labels)) is not None:
        return Verdict(why)
    if view.full:
        return Verdict("full")
    if offer_max_load is not None and view.load >= view.capacity and view.load > offer_max_load:
        return Verdict(f"offer declined at load {view.load}")
    if not bid:
        return Verdict()
    return Verdict(score=scoring.score(req, capacity=view.capacity, load=view.load, capabilities=view.capabilities,
                                       labels=view.labels))


#: An assignment older than this when its run starts is claimed (Running stored) before the agent runs.
CLAIM_FIRST_AFTER_S = 0.25


def claim_first(*, assigned_at: datetime | None, now: datetime) -> bool:
    """Pure: whether a run stores Running before its agent starts rather than beside it: when its assignment is
    old by the time the run starts. It waited for a slot behind others, or the auction or the message was held
    up (a JetStream leader election, an accept the auctioneer gave up on), and the work may have been moved on
    meanwhile: it claims first, so that work no longer its own is given up unrun instead of run and then
    refused. A run that starts right after its assignment (nearly all: a queue that drains in a fraction of a
    second included) starts at once, and its one write goes out while it runs or with its outcome."""
    return assigned_at is not None and (now - assigned_at).total_seconds() > CLAIM_FIRST_AFTER_S


def pick_agent(hosted: Iterable[tuple[str, Iterable[str], int]], req: scoring.Requirements,
               station_capabilities: Iterable[str] = ()) -> str | None:
    """Pure: which hosted agent (name, capabilities, runs in flight) runs the work: the one it names, else the
    least busy one that, with the station's own capabilities, has every capability the work requires (ties by
    name); None if none can."""
    need = scoring.Requirements(agent=req.agent, capabilities=req.capabilities)
    own = frozenset(station_capabilities)
    fitting = [(inflight, name) for name, capabilities, inflight in hosted
               if scoring.fits(need, agents=(name,), capabilities=own.union(capabilities), labels={})]
    return min(fitting)[1] if fitting else None

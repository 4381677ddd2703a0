"""Pure auction logic: what work requires, which stations may bid, how a station scores a bid, and how the
winner is picked."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..contract.messages import AuctionBid, AuctionRequest, StationRecord, StationStatus
from ..contract.specs import WorkItemSpec
from ..routing import is_live

#: Weights of the score's terms; the score is in [-1, 1].
W_FREE = 0.6
W_PREFER = 0.3
W_FIT = 0.1


@dataclass(frozen=True)
class Requirements:
    """What a piece of work needs from a station."""

    agent: str | None = None
    capabilities: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    prefer_labels: Mapping[str, str] = field(default_factory=dict)

    def cache_key(self) -> tuple[object, ...]:
        """What decides which stations fit (preferences only rank them)."""
        return self.agent, self.capabilities, tuple(sorted(self.labels.items()))

    def describe(self) -> str:
        parts = []
        if self.agent:
            parts.append(f"agent {self.agent!r}")
        if self.capabilities:
            parts.append(f"capabilities {sorted(self.capabilities)}")
        if self.labels:
            parts.append(f"labels {dict(self.labels)}")
        return " and ".join(parts) or "anything"


def requirements(spec: WorkItemSpec) -> Requirements:
    """Pure: what a work item needs from a station."""
    return Requirements(agent=spec.agent, capabilities=tuple(spec.required_capabilities),
                        labels=spec.constraints.labels, prefer_labels=spec.constraints.prefer_labels)


def requested(request: AuctionRequest) -> Requirements:
    """Pure: the requirements an auction request states."""
    return Requirements(agent=request.agent, capabilities=tuple(request.capabilities), labels=request.labels,
                        prefer_labels=request.prefer_labels)


def perfect_score(req: Requirements) -> float:
    """Pure: the best score any station can bid for ``req`` (idle, every preferred label, exactly the
    capabilities); a bid this good cannot be beaten but by a tie-break, so an auction may close on it."""
    return round(W_FREE + (W_PREFER if req.prefer_labels else 0.0) + (W_FIT if req.capabilities else 0.0), 6)


def misfit(req: Requirements, *, agents: Iterable[str], capabilities: Iterable[str],
           labels: Mapping[str, str]) -> str | None:
    """Pure: why a station with these agents, capabilities and labels cannot run the work at all, in a few words;
    None if it can."""
    if req.agent is not None and req.agent not in set(agents):
        return f"does not host {req.agent!r}"
    if missing := set(req.capabilities) - set(capabilities):
        return f"lacks {sorted(missing)}"
    if not all(labels.get(k) == v for k, v in req.labels.items()):
        return "labels do not match"
    return None


def fits(req: Requirements, *, agents: Iterable[str], capabilities: Iterable[str], labels: Mapping[str, str]) -> bool:
    """Pure: can a station with these agents, capabilities and labels run the work at all?"""
    return misfit(req, agents=agents, capabilities=capabilities, labels=labels) is None


def fits_station(record: StationRecord, req: Requirements) -> bool:
    """Pure: does this registered station take work (ready) and could it run ``req``, alive or not?"""
    return record.status == StationStatus.READY and fits(req, agents=record.agents,
                                                         capabilities=record.capabilities, labels=record.labels)


def ineligibility(record: StationRecord, req: Requirements, now: datetime | None = None) -> str | None:
    """Pure: why this registered station is not asked for ``req`` (None: it is eligible), in a few words."""
    if record.status != StationStatus.READY:
        return str(record.status)
    if (why := misfit(req, agents=record.agents, capabilities=record.capabilities, labels=record.labels)) is not None:
        if req.agent is not None and req.agent in record.agent_errors:
            why += f": {record.agent_errors[req.agent]}"
        return why
    if not is_live(record, now):
        return f"last heartbeat {record.age_s(now):.1f}s ago"
    return None


def eligible(record: StationRecord, req: Requirements, now: datetime | None = None) -> bool:
    """Pure: should the auctioneer expect a bid from this registered station?"""
    return fits_station(record, req) and is_live(record, now)


def score(req: Requirements, *, capacity: int, load: int, capabilities: Iterable[str],
          labels: Mapping[str, str]) -> float:
    """Pure: a station's bid. Free capacity weighs most; a station already at capacity (the work would queue)
    scores below every station with a free slot; preferred labels and a close capability fit add."""
    capacity = max(capacity, 1)
    free = (capacity - load) / capacity if load < capacity else -min((load - capacity + 1) / capacity, 1.0)
    prefer = (sum(labels.get(k) == v for k, v in req.prefer_labels.items()) / len(req.prefer_labels)
              if req.prefer_labels else 0.0)
    caps = set(capabilities)
    fit = len(set(req.capabilities)) / len(caps) if req.capabilities and caps else 0.0
    return round(W_FREE * free + W_PREFER * prefer + W_FIT * fit, 6)


def tiebreak(work_id: str, station_id: str) -> str:
    """Orders equal stations (bids, or ranks without a station used lately) differently for each work item:
    deterministic, yet equal idle stations share the work instead of the alphabetically first taking it all."""
    return hashlib.blake2b(f"{work_id}/{station_id}".encode(), digest_size=8).hexdigest()


def rank(bids: Iterable[AuctionBid], work_id: str) -> list[AuctionBid]:
    """Pure: the bids that may win, best first: highest score, then lowest load, then the tie-break."""
    valid = [b for b in bids if not b.declined]
    return sorted(valid, key=lambda b: (-b.score, b.load, tiebreak(work_id, b.station_id)))

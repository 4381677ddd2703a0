"""Pure auction logic: which stations may bid, how a station scores a bid, and how the winner is picked."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ..contract.messages import AuctionBid, StationRecord, StationStatus
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

    def describe(self) -> str:
        parts = []
        if self.agent:
            parts.append(f"agent {self.agent!r}")
        if self.capabilities:
            parts.append(f"capabilities {sorted(self.capabilities)}")
        if self.labels:
            parts.append(f"labels {dict(self.labels)}")
        return " and ".join(parts) or "anything"


def fits(req: Requirements, *, agents: Iterable[str], capabilities: Iterable[str], labels: Mapping[str, str]) -> bool:
    """Pure: can a station with these agents, capabilities and labels run the work at all?"""
    if req.agent is not None and req.agent not in set(agents):
        return False
    if not set(req.capabilities) <= set(capabilities):
        return False
    return all(labels.get(k) == v for k, v in req.labels.items())


def fits_station(record: StationRecord, req: Requirements) -> bool:
    """Pure: does this registered station take work (ready) and could it run ``req``, alive or not?"""
    return record.status == StationStatus.READY and fits(req, agents=record.agents,
                                                         capabilities=record.capabilities, labels=record.labels)


def ineligibility(record: StationRecord, req: Requirements, now: datetime | None = None) -> str | None:
    """Pure: why this registered station is not asked for ``req`` (None: it is eligible), in a few words."""
    if record.status != StationStatus.READY:
        return str(record.status)
    if req.agent is not None and req.agent not in record.agents:
        return f"does not host {req.agent!r}"
    if not set(req.capabilities) <= set(record.capabilities):
        return f"lacks {sorted(set(req.capabilities) - set(record.capabilities))}"
    if not all(record.labels.get(k) == v for k, v in req.labels.items()):
        return "labels do not match"
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

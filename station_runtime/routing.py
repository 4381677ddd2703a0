"""Pure routing for synchronous invokes: which stations may serve a request, best first.

Stale records (no heartbeat for 3 intervals) and draining stations are skipped even before the bucket's TTL
removes them, so a dead station is not tried for long.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from .contract.messages import StationRecord, StationStatus, utcnow

MISSED_BEATS_LOST = 3
#: A station this late with its beat is probed: if NATS has no responder for it, it is lost now; if it answers, it
#: is there, and its beats are what is late (the stations bucket electing a leader on a cluster).
BEATS_OVERDUE = 1.5


def is_live(record: StationRecord, now: datetime | None = None) -> bool:
    return record.age_s(now) <= record.heartbeat_interval_s * MISSED_BEATS_LOST


def overdue(record: StationRecord, now: datetime | None = None) -> bool:
    """Pure: late enough with its heartbeat to be worth a probe (live still, or past its three beats: whether it
    is lost is then up to the probe's answer)."""
    return record.answers_ping and record.age_s(now) > record.heartbeat_interval_s * BEATS_OVERDUE


def candidates(records: Iterable[StationRecord], *, agent: str | None = None, capability: str | None = None,
               extra_load: Mapping[str, int] | None = None, now: datetime | None = None) -> list[StationRecord]:
    """Live, ready stations hosting ``agent`` (or having ``capability``), least loaded first (load relative to
    capacity, counting ``extra_load`` the caller has in flight), ties broken by station id."""
    now = now or utcnow()
    extra = extra_load or {}
    eligible = [
        r for r in records
        if r.status == StationStatus.READY and is_live(r, now)
        and (agent is None or agent in r.agents)
        and (capability is None or capability in r.capabilities)
    ]

    def key(r: StationRecord) -> tuple[float, int, str]:
        load = r.load + extra.get(r.station_id, 0)
        return (load / max(r.capacity, 1), load, r.station_id)

    return sorted(eligible, key=key)

"""The work phase machine: which phase may follow which. One pure function, used by every writer.

    Pending ──► Scheduling ──► Assigned ──► Running ──► Succeeded | Failed
       ▲  │         │  ▲          │  │         │
       │  │         ▼  │          │  │         ├──► Pending (requeued: station lost, stuck, timed out, drained)
       │  │    Unschedulable      │  │         └──► Escalated (retries exhausted)
       │  │                       │  └──► Assigned (the winner never accepted: next bid)
       └──┴───────────────────────┴──► Pending (requeued)
    Assigned | Running ──► AwaitingApproval | AwaitingInput ──► Pending (a person decided, or the deadline did)
    any non-terminal ──► Cancelled | Failed (deadline) | Escalated
"""

from __future__ import annotations

from typing import Any, Final

from ..contract.messages import WorkPhase, WorkRecord, utcnow
from ..errors import LatticeError

P = WorkPhase

_ALLOWED: Final[dict[WorkPhase, frozenset[WorkPhase]]] = {
    P.PENDING: frozenset({P.SCHEDULING, P.RUNNING}),  # Running: a workflow starts its first step
    P.SCHEDULING: frozenset({P.ASSIGNED, P.UNSCHEDULABLE, P.PENDING}),
    P.UNSCHEDULABLE: frozenset({P.SCHEDULING, P.PENDING}),
    P.ASSIGNED: frozenset({P.RUNNING, P.ASSIGNED, P.PENDING, P.SUCCEEDED, P.AWAITING_APPROVAL, P.AWAITING_INPUT}),
    P.RUNNING: frozenset({P.SUCCEEDED, P.PENDING, P.RUNNING, P.AWAITING_APPROVAL, P.AWAITING_INPUT}),
    # A person's decision (or the deadline's) sends it back to be placed: the next attempt resumes the run.
    P.AWAITING_APPROVAL: frozenset({P.PENDING}),
    P.AWAITING_INPUT: frozenset({P.PENDING}),
}
#: Allowed from every non-terminal phase.
_ALWAYS: Final = frozenset({P.CANCELLED, P.FAILED, P.ESCALATED})


class IllegalTransition(LatticeError, ValueError):
    def __init__(self, record: WorkRecord, to: WorkPhase) -> None:
        self.record = record
        self.to = to
        super().__init__(f"work {record.work_id}: {record.phase} -> {to} is not allowed")


def allowed(src: WorkPhase, dst: WorkPhase) -> bool:
    """Pure: may a record in ``src`` move to ``dst``? Terminal phases never change."""
    if src.terminal:
        return False
    return dst in _ALWAYS or dst in _ALLOWED[src]


def transition(record: WorkRecord, to: WorkPhase, **changes: Any) -> WorkRecord:
    """The record moved to ``to`` with ``changes`` applied and timestamps kept; raises IllegalTransition."""
    if not allowed(record.phase, to):
        raise IllegalTransition(record, to)
    now = utcnow()
    update: dict[str, Any] = {"phase": to, "updated_at": now, **changes}
    if to == P.SCHEDULING:
        update.setdefault("scheduled_at", now)
    elif to == P.ASSIGNED:
        update.setdefault("assigned_at", now)
    elif to == P.RUNNING and record.phase != P.RUNNING:
        update.setdefault("started_at", now)
    elif to.terminal:
        update.setdefault("finished_at", now)
    if to.awaiting:
        # Suspended: the attempt is over and holds no station; it spends no retry.
        update.setdefault("station_id", None)
        update.setdefault("attempt_id", None)
        update.setdefault("suspensions", record.suspensions + 1)
    if record.phase.awaiting:
        update.setdefault("waiting", None)
    if to == P.PENDING:
        # A requeue: the old attempt is over; the next assignment starts a new one.
        update.setdefault("station_id", None)
        update.setdefault("attempt_id", None)
        update.setdefault("started_at", None)
        update.setdefault("assigned_at", None)
        update.setdefault("progress_percent", None)
        update.setdefault("progress_message", "")
    return record.model_copy(update=update)

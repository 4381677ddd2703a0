"""Pure: what a person's decision (or a deadline) does to a run that waits for one.

A run suspends before a tool call that needs approval (AwaitingApproval) or on a question it asked
(AwaitingInput); the decision is recorded in the record under the call's idempotency key, and the work goes
back to Pending, to be placed like any work. The next attempt resumes the run from its journal and finds the
decision there: the call runs (approved), is answered with an error the model reads (rejected), or the question
is answered (the reply).
"""

from __future__ import annotations

from ..contract.messages import MAX_DECISIONS, HumanDecision, WorkPhase, WorkRecord, utcnow
from ..errors import LatticeError
from . import phases

P = WorkPhase


class NotWaiting(LatticeError):
    """The work does not wait for this kind of decision (or for any): nothing is changed."""


def decide(record: WorkRecord, *, approved: bool, reply: str | None = None, reason: str = "",
           by: str = "") -> WorkRecord:
    """The record with a person's decision on what it waits for, back to Pending. ``reply``: the answer to a
    question (AwaitingInput); otherwise an approval (AwaitingApproval) or a rejection."""
    waiting = record.waiting
    if not record.phase.awaiting or waiting is None:
        raise NotWaiting(f"work {record.work_id} is {record.phase}, not waiting for a person")
    if reply is not None and waiting.kind != "input":
        raise NotWaiting(f"work {record.work_id} waits for {waiting.summary()}: approve or reject it, "
                         "`lattice work reply` answers a question")
    if reply is None and waiting.kind == "input" and approved:
        raise NotWaiting(f"work {record.work_id} waits for {waiting.summary()}: answer it with "
                         "`lattice work reply ID TEXT`")
    if waiting.key not in record.decisions and len(record.decisions) >= MAX_DECISIONS:
        raise NotWaiting(f"work {record.work_id} has {MAX_DECISIONS} decisions already: no more are kept")
    decision = HumanDecision(approved=approved, reply=reply, reason=reason, by=by)
    said = "answered" if reply is not None else ("approved" if approved else "rejected")
    return phases.transition(record, P.PENDING, decisions={**record.decisions, waiting.key: decision},
                             retry_at=utcnow(), reason=f"{waiting.summary()} {said}"
                             + (f" by {by}" if by else "") + (f": {reason}" if reason else ""))


def timed_out(record: WorkRecord) -> WorkRecord:
    """The deadline decides: the call is rejected, the question goes unanswered."""
    waiting = record.waiting
    assert waiting is not None
    return decide(record, approved=False, reason="no decision by the deadline", by="the deadline")

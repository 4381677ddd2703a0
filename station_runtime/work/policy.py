"""Pure witness and retry decisions: given a work record, the live stations and the clock, what to do."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..backoff import compute_backoff
from ..contract.messages import ErrorCode, WorkPhase, WorkRecord

P = WorkPhase


@dataclass(frozen=True)
class WitnessPolicy:
    #: A winner must start the work (Assigned -> Running) within this time, else the work is requeued.
    accept_timeout_s: float = 5.0
    #: Running work with no progress report for this long is requeued as stuck.
    stuck_threshold_s: float = 600.0
    #: Pending work nobody scheduled for this long (its submitter died) is auctioned by the witness.
    pending_grace_s: float = 2.0
    #: An auction that has not concluded after this long (its auctioneer died) is taken over.
    scheduling_timeout_s: float = 5.0
    #: Cancellation of running work not confirmed by its station within this long is forced.
    cancel_grace_s: float = 10.0
    #: Unschedulable retry backoff.
    unschedulable_base_s: float = 1.0
    unschedulable_max_s: float = 30.0
    #: A station enforces its attempt's startToClose itself, to the millisecond; the witness steps in (for a
    #: station that cannot: hung, cut off) this much later, so that the two do not race for the same outcome.
    deadline_grace_s: float = 1.0


class Action(enum.StrEnum):
    NONE = "none"
    SCHEDULE = "schedule"
    REQUEUE = "requeue"
    ESCALATE = "escalate"
    FAIL = "fail"
    CANCEL = "cancel"
    #: A waiting run's deadline passed: decide for the person (reject the call, answer "no answer").
    TIME_OUT_WAIT = "time_out_wait"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    #: For a failure or an escalation: what kind it is (a deadline is a timeout, a lost station is not).
    code: ErrorCode = ErrorCode.INTERNAL


NOTHING = Decision(Action.NONE)


def _age(ts: datetime | None, now: datetime) -> float:
    return (now - ts).total_seconds() if ts else 0.0


def retries_left(record: WorkRecord) -> bool:
    # Attempts that ended by waiting for a person spend no retry.
    return record.attempt - record.suspensions <= record.spec.max_retries


def requeue_or_escalate(record: WorkRecord, reason: str, code: ErrorCode = ErrorCode.INTERNAL) -> Decision:
    """Pure: a failed attempt is retried while retries remain, then escalated."""
    if retries_left(record):
        return Decision(Action.REQUEUE, reason, code)
    return Decision(Action.ESCALATE, f"{reason}; retries exhausted after {record.attempt} attempt(s)", code)


@dataclass(frozen=True)
class Holding:
    """What a station's last heartbeat said it holds (accepted, running or queued), and when it said it; and
    when the run of the station that said it started."""

    at: datetime
    work_ids: frozenset[str]
    started_at: datetime | None = None


def decide(record: WorkRecord, *, live_stations: Collection[str], now: datetime, policy: WitnessPolicy,
           station_joined_since: datetime | None = None, holdings: Mapping[str, Holding] | None = None) -> Decision:
    """Pure: what the witness does with ``record`` now. ``live_stations`` are ids with a fresh heartbeat;
    ``holdings`` what each station's last heartbeat said it holds."""
    phase = record.phase
    if phase.terminal:
        return NOTHING  # kept for the org's retention, then deleted by the server (the TTL of its last write)
    if record.is_workflow:
        return NOTHING  # workflows are driven by the workflow driver, their steps by this function
    timeouts = record.spec.timeouts
    if record.cancel_requested:
        if phase not in (P.ASSIGNED, P.RUNNING) or record.station_id not in live_stations:
            return Decision(Action.CANCEL, "cancelled")
        if _age(record.updated_at, now) > policy.cancel_grace_s:
            return Decision(Action.CANCEL, "cancelled (station did not confirm)")
        return NOTHING
    if (close := timeouts.schedule_to_close_seconds) is not None:
        # A running attempt's station stops it at the deadline itself; the witness steps in a little later.
        grace = policy.deadline_grace_s if phase in (P.ASSIGNED, P.RUNNING) else 0.0
        if _age(record.created_at, now) > close + grace:
            return Decision(Action.FAIL, f"not finished within scheduleToClose {close:g}s", ErrorCode.TIMEOUT)
    limit = timeouts.schedule_to_start_seconds
    # (Not after a suspension: the run started, then waited for a person.)
    if limit and phase in (P.PENDING, P.SCHEDULING, P.UNSCHEDULABLE) and not record.suspensions \
            and _age(record.created_at, now) > limit:
        return Decision(Action.FAIL, f"not started within scheduleToStart {limit:g}s", ErrorCode.TIMEOUT)
    if phase.awaiting:
        waiting = record.waiting
        if waiting is not None and waiting.deadline_at is not None and now >= waiting.deadline_at:
            return Decision(Action.TIME_OUT_WAIT, f"no decision on {waiting.summary()} by its deadline",
                            ErrorCode.TIMEOUT)
        return NOTHING
    if phase == P.PENDING:
        if record.retry_at and now < record.retry_at:
            return NOTHING
        if record.retry_at or _age(record.updated_at, now) > policy.pending_grace_s:
            return Decision(Action.SCHEDULE, "pending")
        return NOTHING
    if phase == P.SCHEDULING:
        if _age(record.updated_at, now) > policy.scheduling_timeout_s \
                and not _claimed_at(record, holdings, live_stations):
            return Decision(Action.SCHEDULE, "auction abandoned")
        return NOTHING
    if phase == P.UNSCHEDULABLE:
        if station_joined_since and station_joined_since > record.updated_at:
            return Decision(Action.SCHEDULE, "a station joined")
        if record.retry_at is None or now >= record.retry_at:
            return Decision(Action.SCHEDULE, "unschedulable backoff elapsed")
        return NOTHING
    # Assigned or Running: the attempt belongs to a station.
    if record.station_id not in live_stations:
        return requeue_or_escalate(record, f"station {record.station_id} lost")
    if _dropped_by_restart(record, holdings):
        return requeue_or_escalate(record, f"station {record.station_id} restarted without it (accepted after "
                                           "its last beat before the restart, it was not resumed)")
    if phase == P.ASSIGNED and _age(record.assigned_at, now) > policy.accept_timeout_s \
            and not _queued_there(record, holdings):
        return requeue_or_escalate(record, f"station {record.station_id} did not start the work within "
                                           f"{policy.accept_timeout_s:g}s")
    if phase == P.RUNNING:
        if _age(record.started_at, now) > timeouts.start_to_close_seconds + policy.deadline_grace_s:
            return requeue_or_escalate(record, f"attempt exceeded startToClose {timeouts.start_to_close_seconds:g}s",
                                       ErrorCode.TIMEOUT)
        last = record.last_progress_at or record.started_at
        quiet = heartbeat_limit(record, policy)
        if _age(last, now) > quiet:
            return requeue_or_escalate(record, f"no progress for {quiet:g}s (heartbeat timeout)", ErrorCode.TIMEOUT)
    return NOTHING


def _queued_there(record: WorkRecord, holdings: Mapping[str, Holding] | None) -> bool:
    """The record's station said, in a heartbeat after the assignment, that it holds the work: it accepted it and
    it waits there for a run slot (the accept timeout is for assignments nobody took up)."""
    held = holdings.get(record.station_id or "") if holdings else None
    return held is not None and record.assigned_at is not None and held.at > record.assigned_at \
        and record.work_id in held.work_ids


def _dropped_by_restart(record: WorkRecord, holdings: Mapping[str, Holding] | None) -> bool:
    """The record's station restarted after the attempt was given to it, and a beat of its new run does not list
    the attempt's work: a restarted station resumes what its previous run's last beat listed before it beats, so
    this is work accepted after that beat, taken down with the previous run."""
    held = holdings.get(record.station_id or "") if holdings else None
    given = record.assigned_at or record.started_at
    return held is not None and held.started_at is not None and given is not None and held.started_at > given \
        and held.at > held.started_at and record.work_id not in held.work_ids


def _claimed_at(record: WorkRecord, holdings: Mapping[str, Holding] | None, live: Collection[str]) -> bool:
    """A live station said, in a heartbeat after the auction began, that it holds the work: the auction's winner
    has it and its claim (its first write) is on the way; the auction was not abandoned."""
    return bool(holdings) and any(record.work_id in held.work_ids and held.at > record.updated_at
                                  and station in live for station, held in (holdings or {}).items())


def heartbeat_limit(record: WorkRecord, policy: WitnessPolicy) -> float:
    """Pure: how long a running attempt of ``record`` may go without progress: its own heartbeat timeout, else
    the controller's stuck threshold."""
    return record.spec.timeouts.heartbeat_seconds or policy.stuck_threshold_s


def close_deadline_s(record: WorkRecord, now: datetime) -> float | None:
    """Pure: seconds until ``record``'s scheduleToClose deadline (negative once past), or None without one."""
    close = record.spec.timeouts.schedule_to_close_seconds
    return None if close is None else close - _age(record.created_at, now)


def unschedulable_retry_at(record: WorkRecord, now: datetime, policy: WitnessPolicy) -> datetime:
    delay = compute_backoff(record.schedule_attempts, base_s=policy.unschedulable_base_s,
                            max_s=policy.unschedulable_max_s)
    return now + timedelta(seconds=delay)


def _at(ts: datetime | None, seconds: float | None) -> datetime | None:
    return None if ts is None or seconds is None else ts + timedelta(seconds=seconds)


def next_check(record: WorkRecord, policy: WitnessPolicy) -> datetime | None:
    """Pure: the earliest time at which :func:`decide` may answer differently for ``record`` because of the clock
    alone (a deadline, a backoff, a grace period); None if only a change of the record or of the
    stations can. The witness keeps these in a timer heap, so that its cost follows what changes and what is due,
    not what is stored. Station loss is not a time of the record's: the witness checks the stations that hold
    work on every tick."""
    phase = record.phase
    if phase.terminal or record.is_workflow:
        return None  # a finished record is left alone; a workflow is driven when it or its current step changes
    times: list[datetime | None] = []
    if (close := record.spec.timeouts.schedule_to_close_seconds) is not None:
        grace = policy.deadline_grace_s if phase in (P.ASSIGNED, P.RUNNING) else 0.0
        times.append(_at(record.created_at, close + grace))
    if record.cancel_requested:
        times.append(_at(record.updated_at, policy.cancel_grace_s))
    if phase in (P.PENDING, P.SCHEDULING, P.UNSCHEDULABLE) and not record.suspensions:
        times.append(_at(record.created_at, record.spec.timeouts.schedule_to_start_seconds))
    if phase.awaiting and record.waiting is not None:
        times.append(record.waiting.deadline_at)
    if phase == P.PENDING:
        times.append(record.retry_at or _at(record.updated_at, policy.pending_grace_s))
    elif phase == P.SCHEDULING:
        times.append(_at(record.updated_at, policy.scheduling_timeout_s))
    elif phase == P.UNSCHEDULABLE:
        times.append(record.retry_at or record.updated_at)
    elif phase == P.ASSIGNED:
        times.append(_at(record.assigned_at, policy.accept_timeout_s))
    elif phase == P.RUNNING:
        times.append(_at(record.started_at, record.spec.timeouts.start_to_close_seconds + policy.deadline_grace_s))
        times.append(_at(record.last_progress_at or record.started_at, heartbeat_limit(record, policy)))
    due = [t for t in times if t is not None]
    return min(due) if due else None

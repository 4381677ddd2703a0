"""The station's side of async work: bidding, accepting assignments, running them with progress, writing the
outcome with a compare-and-set, cancellation, hand-back on drain, and propulsion on start.

Every write names the attempt it belongs to: if the record has moved on to another attempt (the witness requeued
it, another bid was taken), the write is refused, counted and recorded as a ``work.rejected`` event, never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry.trace import INVALID_SPAN, Span

from ..contract import subjects
from ..contract.codec import decode_or_log, encode
from ..contract.messages import (
    MAX_HELD_LISTED,
    AuctionBid,
    AuctionRequest,
    ErrorCode,
    StationRecord,
    Usage,
    Waiting,
    WorkAccept,
    WorkAssign,
    WorkCancel,
    WorkError,
    WorkPhase,
    WorkProgress,
    WorkRecord,
    utcnow,
)
from ..contract.specs import LLM_PROVIDERS
from ..errors import LatticeError, ResultTooLarge
from ..executors import AgentFailure, Execution, Progress, Suspended
from ..natsio.retry import BEST_EFFORT_FAILURES, NATS_FAILURES, is_transient, retry_transient
from ..telemetry import metrics, tracing
from ..work import phases, scoring
from ..work.journal import JournalConflict, JournalStore, RunJournalWriter
from ..work.policy import Action, close_deadline_s, requeue_or_escalate
from ..work.store import Versioned, WorkStore
from .admission import StationView, claim_first, judge, pick_agent
from .agents import AgentHost, HostedAgent
from .delegation import Delegation
from .invoke import Reservation, Slots
from .settings import StationSettings

log = logging.getLogger(__name__)
P = WorkPhase

#: Progress goes out on NATS at most this often per work item, and into the record at most this often.
PROGRESS_PUBLISH_INTERVAL_S = 0.1
PROGRESS_RECORD_INTERVAL_S = 1.0
#: Work that finishes within this long goes Assigned -> Succeeded in one write; longer work records Running.
#: Zero: only work that finishes without ever waiting (no I/O: a no-op, a cached answer) skips the Running
#: write; anything that awaits records Running at once, as before.
QUIET_START_S = 0.0


class Superseded(LatticeError):
    """The record belongs to another attempt now: stop, write nothing."""


@dataclass
class Run:
    """One attempt this station is running; owns the record's latest revision as far as we know it."""

    work_id: str
    attempt_id: str
    #: The latest version we know of; None after an outage, until re-read.
    current: Versioned | None
    task: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_publish: float = 0.0
    last_record: float = 0.0
    cancel_reason: str = ""
    pending_tokens: list[str] = field(default_factory=list)
    #: Whether the record says Running (short work skips that write), and when the executor started.
    running_recorded: bool = False
    started_at: datetime | None = None
    #: Sends the acceptance of the assignment (when the run starts).
    accept: Callable[[], Awaitable[None]] | None = None
    #: Writes Running once the executor has had to wait.
    marker: asyncio.Task[None] | None = None
    #: Agent runs: what this attempt spent and the work it delegated (recorded with its outcome).
    usage: Usage | None = None
    children: tuple[str, ...] = ()
    #: ``usage`` is the whole run's (a journalled run counts every attempt from its journal): it replaces.
    whole_run: bool = False
    #: The last structured progress published (turn, tool, message): a new one goes out at once.
    last_step: tuple[int | None, str, str] = (None, "", "")
    #: The hosted agent that runs it (a metric label: work may name a capability instead).
    agent: str = ""
    #: The attempt's span (the no-op span when not tracing), ended when the run ends.
    span: Span = INVALID_SPAN

    def spent(self, record: WorkRecord) -> dict[str, Any]:
        """The record's usage and children with this attempt's added (earlier attempts' spend is kept)."""
        out: dict[str, Any] = {}
        if self.usage:
            out["usage"] = self.usage if self.whole_run else (record.usage or Usage()) + self.usage
        if self.children:
            out["children"] = list(dict.fromkeys([*record.children, *self.children]))
        return out


class WorkService:
    def __init__(self, nc: NatsClient, settings: StationSettings, store: WorkStore, agents: AgentHost,
                 slots: Slots, is_draining: Callable[[], bool], delegation: Delegation | None = None) -> None:
        self.nc = nc
        self.delegation = delegation
        self.settings = settings
        self.org = settings.org
        self.station_id = settings.station_id
        self.store = store
        self.journals = JournalStore(store.state)
        self.agents = agents
        self.slots = slots
        self.is_draining = is_draining
        self.runs: dict[str, Run] = {}
        self.rejected = 0
        self.completed = 0

    async def subscribe(self) -> list[Any]:
        return [
            await self.nc.subscribe(subjects.station_auction(self.org, self.station_id), cb=self.on_auction),
            await self.nc.subscribe(subjects.work_assign(self.org, self.station_id), cb=self.on_assign),
            await self.nc.subscribe(subjects.work_cancel(self.org, self.station_id), cb=self.on_cancel),
        ]

    # --- bidding and accepting ------------------------------------------------------------------------------

    def view(self) -> StationView:
        """What the station is right now, for :func:`.admission.judge`."""
        slots, agents = self.slots, self.agents
        return StationView(station_id=self.station_id, draining=self.is_draining(), load=slots.load,
                           capacity=slots.capacity, queue_limit=slots.queue_limit, agents=frozenset(agents.agents),
                           capabilities=frozenset(self.settings.capabilities) | agents.capabilities(),
                           labels=self.settings.labels)

    async def on_auction(self, msg: Msg) -> None:
        request = decode_or_log(msg.data, AuctionRequest, what="auction request", logger=log)
        if request is None or not msg.reply:
            return
        view = self.view()
        verdict = judge(view, scoring.requested(request), bid=True)
        bid = AuctionBid(auction_id=request.auction_id, station_id=self.station_id, load=view.load,
                         capacity=view.capacity, score=verdict.score, declined=not verdict.ok, reason=verdict.reason)
        metrics.BIDS.add(1, {"declined": "true" if bid.declined else "false"})
        try:
            # The bid answers in the auction's trace: its context goes back with it.
            await self.nc.publish(msg.reply, encode(bid), headers=msg.headers if tracing.enabled() else None)
        except (nats.errors.Error, OSError) as exc:  # NATS away: the auction treats us as silent
            log.debug("could not send bid for %s: %s", request.work_id, exc)

    async def on_assign(self, msg: Msg) -> None:
        assign = decode_or_log(msg.data, WorkAssign, what="assignment", logger=log)
        if assign is None:
            return
        record = assign.record
        # The attempt's span starts with the claim: accepted, it is the run's span (ended by the run's task);
        # declined, it is renamed lattice.claim and ends here. One span per attempt, not two: a span costs ~30 us
        # to make and as much to export, on the work's critical path (docs/architecture.md, Telemetry).
        span = tracing.start("lattice.run", kind="consumer", parent=tracing.incoming(msg.headers, record.traceparent),
                             attributes=self._attributes(record))
        with tracing.use(span, end=False):
            await self._claim(msg, assign, span)

    async def _claim(self, msg: Msg, assign: WorkAssign, span: Span) -> None:
        record = assign.record
        verdict = judge(self.view(), scoring.requirements(record.spec), assigned_to=record.station_id,
                        running=record.work_id in self.runs, offer_max_load=assign.offer_max_load)
        accepted = verdict.ok and record.attempt_id is not None
        if tracing.enabled():
            span.add_event("claim", {"lattice.accepted": accepted, "lattice.reason": verdict.reason})
            if not accepted:
                span.update_name("lattice.claim")
                span.set_attributes({"lattice.accepted": False, "lattice.reason": verdict.reason})

        async def reply() -> None:
            if not msg.reply:
                return
            answer = WorkAccept(work_id=record.work_id, attempt_id=record.attempt_id or "",
                                station_id=self.station_id, accepted=accepted, reason=verdict.reason)
            try:
                # No trace headers: the answer's reader (the auctioneer) is inside the span that asked.
                await self.nc.publish(msg.reply, encode(answer))
            except (nats.errors.Error, OSError) as exc:  # NATS away: the auctioneer's timeout tries the next bid
                log.debug("could not answer the assignment of %s: %s", record.work_id, exc)

        if accepted:
            # The run answers first thing, before it waits for a slot: the answer then leaves in the same socket
            # write as the run's first messages (one write and one wake-up less per item), never later than that.
            self._start(Versioned(record, assign.revision), accept=reply, span=span)
        else:
            await reply()
            span.end()

    def _start(self, versioned: Versioned, accept: Callable[[], Awaitable[None]] | None = None,
               span: Span | None = None) -> None:
        record = versioned.record
        assert record.attempt_id is not None
        # Work resumed after a restart has no claim: its span starts here, in the trace its record names.
        span = span or tracing.start("lattice.run", kind="consumer", parent=tracing.incoming(None, record.traceparent),
                                     attributes=self._attributes(record))
        run = Run(record.work_id, record.attempt_id, versioned, accept=accept, span=span)
        self.runs[record.work_id] = run
        run.task = asyncio.create_task(self._execute(run, self.slots.reserve()), name=f"work-{record.work_id}")

    # --- execution ------------------------------------------------------------------------------------------

    async def _write(self, run: Run, fn: Callable[[WorkRecord], WorkRecord], *, outcome: bool = False) -> Versioned:
        """CAS a change to our attempt's record; raise Superseded if the record is no longer ours. Through a NATS
        outage a write is retried with backoff: for two minutes, or for an ``outcome`` (the attempt's result, its
        hand-back) until NATS is back, however long: a finished run is never thrown away and run again because
        the lattice was unreachable when it ended. The write stays fenced by the attempt: if the witness moved
        the work on meanwhile, it is refused, not applied."""

        def guarded(r: WorkRecord) -> WorkRecord | None:
            if r.attempt_id != run.attempt_id or r.station_id != self.station_id or r.phase.terminal:
                raise Superseded(f"record is at attempt {r.attempt_id} on {r.station_id} ({r.phase})")
            return fn(r)

        async def attempt() -> Versioned | None:
            try:
                return await self.store.mutate(run.work_id, guarded, current=run.current)
            except Exception as exc:  # looked at, then re-raised: a transient one is retried by retry_transient
                if is_transient(exc):
                    run.current = None  # the write may or may not have landed: re-read
                raise

        async with run.lock:
            result = await retry_transient(attempt, what=f"work {run.work_id}: record update",
                                           deadline_s=None if outcome else 120.0)
            if result is None:
                raise Superseded("record is gone")
            run.current = result
            return result

    async def _execute(self, run: Run, reservation: Reservation) -> None:
        if run.accept is not None:
            await run.accept()
        try:
            with tracing.use(run.span):
                async with reservation.run():
                    await self._run_attempt(run)
                    if tracing.enabled() and run.current is not None:
                        run.span.set_attributes({"lattice.work.phase": run.current.record.phase.value,
                                                 "lattice.agent.name": run.agent})
        except Superseded as exc:
            await self._rejected(run, str(exc))
        except asyncio.CancelledError:
            # Cancelled outside the agent run (while writing a state change): still record it, best effort.
            with contextlib.suppress(*BEST_EFFORT_FAILURES, asyncio.CancelledError):
                await self._cancelled(run)
        except Exception:  # a bug in one run must cost that run, never the station: logged whole
            log.exception("work %s: unexpected failure", run.work_id)
        finally:
            reservation.cancel()
            self.runs.pop(run.work_id, None)

    async def _run_attempt(self, run: Run) -> None:
        assert run.current is not None
        record = run.current.record
        resumed = record.phase == P.RUNNING
        if resumed:
            # Restarted mid-work: say so in the record at once.
            await self._write(run, lambda r: phases.transition(r, P.RUNNING, reason="resumed after station restart",
                                                               last_progress_at=utcnow()))
            run.running_recorded = True
        elif claim_first(assigned_at=record.assigned_at, now=utcnow()):
            # Running is written before the agent starts, not beside it (the same one write: only the order
            # differs), so that work moved on meanwhile is given up unrun instead of run and then refused.
            running = await self._write(run, lambda r: phases.transition(r, P.RUNNING, last_progress_at=utcnow()))
            run.running_recorded = True
            await self.store.emit("work", "started", running.record)
        # Short work never writes Running: Assigned -> Succeeded is one write instead of two (and no "started"
        # event: events follow stored changes). Work still going after QUIET_START_S records Running, in the
        # background while the executor runs.
        started = run.current.record if run.running_recorded else \
            phases.transition(record, P.RUNNING, last_progress_at=utcnow())
        run.started_at = started.started_at
        if resumed:
            await self.store.emit("work", "started", started, resumed=True)
        spec = started.spec
        agent = self._pick_agent(started)
        run.agent = agent.name if agent is not None else ""
        if agent is None:
            await self._finish(run, P.FAILED, error=WorkError(code=ErrorCode.NOT_FOUND,
                                                              message="no hosted agent can run this work"))
            return
        remaining = spec.timeouts.start_to_close_seconds - (
            (utcnow() - started.started_at).total_seconds() if started.started_at else 0.0)
        # The work's own deadline (scheduleToClose, across attempts) may come first: then the run ends there.
        close_left = close_deadline_s(started, utcnow())
        closing = close_left is not None and close_left < remaining
        if closing and close_left is not None:
            remaining = close_left
        # A timer, not a task: it first fires once the executor has had to wait, so work that never waits
        # cancels it before it costs anything.
        marker = None if run.running_recorded else \
            asyncio.get_running_loop().call_later(QUIET_START_S, self._mark_running, run)
        agent.acquire()
        deadline = asyncio.timeout(max(remaining, 0.001))
        try:
            async with deadline:
                journal = await self._journal(agent, started, resumed)
                outcome = await agent.executor.run(Execution(
                    input=spec.input, request_id=run.work_id, progress=lambda p: self._progress(run, p),
                    context={"work_id": run.work_id, "attempt": started.attempt}, work=spec,
                    deadline_s=max(remaining, 0.001), depth=started.depth,
                    delegate=self.delegation.for_run(spec.max_retries) if self.delegation else None,
                    journal=journal, decisions=started.decisions))
        except TimeoutError:
            if not deadline.expired():  # the agent's own timeout (a call it made), not ours: retried as such
                decision = requeue_or_escalate(started, "the agent timed out (a timeout of its own, not startToClose)")
                await self._give_up(run, decision.action, decision.reason, ErrorCode.TIMEOUT)
                return
            if closing:
                said = f"not finished within scheduleToClose {spec.timeouts.schedule_to_close_seconds:g}s"
                await self._finish(run, P.FAILED, reason=said, error=WorkError(code=ErrorCode.TIMEOUT, message=said))
                return
            decision = requeue_or_escalate(started, f"attempt exceeded startToClose "
                                                    f"{spec.timeouts.start_to_close_seconds:g}s")
            await self._give_up(run, decision.action, decision.reason, ErrorCode.TIMEOUT)
            return
        except asyncio.CancelledError:
            await self._cancelled(run)
            return
        except JournalConflict as exc:
            raise Superseded(str(exc)) from exc
        except Suspended as exc:
            run.usage, run.children, run.whole_run = exc.usage, exc.children, exc.whole_run
            await self._suspend(run, exc.waiting)
            return
        except AgentFailure as exc:
            run.usage, run.children, run.whole_run = exc.usage, exc.children, exc.whole_run
            if exc.code == ErrorCode.UNKNOWN_OUTCOME:  # a person must look: escalated, never run again by itself
                await self._finish(run, P.ESCALATED, reason=str(exc), error=WorkError(code=exc.code,
                                                                                      message=str(exc)))
            elif exc.code.retryable:
                decision = requeue_or_escalate(started, str(exc))
                await self._give_up(run, decision.action, decision.reason, exc.code)
            else:
                await self._finish(run, P.FAILED, error=WorkError(code=exc.code, message=str(exc)))
            return
        finally:
            agent.release()
            if marker is not None:
                marker.cancel()
            if run.marker is not None:
                # Safe even mid-write: every write is a CAS, so the next one re-reads if this one landed.
                run.marker.cancel()
        run.usage, run.children, run.whole_run = outcome.usage or None, outcome.children, outcome.whole_run
        try:
            result, ref = await self.store.store_result(run.work_id, run.attempt_id, outcome.output)
        except (ResultTooLarge, TypeError, ValueError) as exc:
            await self._finish(run, P.FAILED, error=WorkError(code=ErrorCode.AGENT_ERROR, message=str(exc)))
            return
        await self._finish(run, P.SUCCEEDED, result=result, result_ref=ref, progress_percent=100.0)

    async def _journal(self, agent: HostedAgent, record: WorkRecord, resumed: bool) -> RunJournalWriter | None:
        """The run's journal, for agents that keep one (an LLM loop with ``journal`` on). A later attempt or a
        resumed one reads what the journal has and takes it over; a first attempt starts it without a read."""
        spec = agent.definition.spec
        if not spec.journal or spec.model.provider not in LLM_PROVIDERS:
            return None
        resume = resumed or record.attempt > 1
        try:
            return await self.journals.open(record, self.station_id, resume=resume)
        except NATS_FAILURES as exc:
            raise AgentFailure(f"the run's journal could not be read: {exc or type(exc).__name__}",
                               ErrorCode.INTERNAL) from exc

    def _mark_running(self, run: Run) -> None:
        if not run.running_recorded:
            run.marker = asyncio.create_task(self._record_running(run), name=f"running-{run.work_id}")

    async def _record_running(self, run: Run) -> None:
        if run.running_recorded:
            return
        run.running_recorded = True
        try:
            running = await self._write(run, lambda r: phases.transition(r, P.RUNNING, last_progress_at=utcnow()))
            await self.store.emit("work", "started", running.record)
        except Superseded:
            pass  # the final write finds out again and reports it
        except BEST_EFFORT_FAILURES as exc:  # NATS down for minutes: the outcome write retries on its own
            log.warning("work %s: could not record Running: %s", run.work_id, exc)

    def _attributes(self, record: WorkRecord) -> dict[str, Any]:
        # Few: each costs a few microseconds per span; the org and the station are the resource's already.
        return {"lattice.work.id": record.work_id, "lattice.work.attempt": record.attempt,
                "lattice.station.id": self.station_id, "lattice.agent": record.spec.agent}

    def _observe(self, run: Run, record: WorkRecord, outcome: str) -> None:
        """An attempt ended: its metrics (schedule-to-start, run time and end-to-end for the final outcomes)."""
        labels = {"agent": run.agent or record.spec.agent or "", "outcome": outcome}
        metrics.RUNS.add(1, labels)
        now = utcnow()
        if run.started_at is not None:
            metrics.RUN_DURATION.record((now - run.started_at).total_seconds(), labels)
            if record.attempt <= 1:
                metrics.SCHEDULE_TO_START.record(max((run.started_at - record.created_at).total_seconds(), 0.0),
                                                 {"agent": labels["agent"]})
        if record.phase.terminal:
            metrics.END_TO_END.record(max((now - record.created_at).total_seconds(), 0.0), labels)

    def _pick_agent(self, record: WorkRecord) -> HostedAgent | None:
        name = pick_agent(self.agents.hosted(), scoring.requirements(record.spec), self.settings.capabilities)
        return None if name is None else self.agents.get(name)

    async def _progress(self, run: Run, progress: Progress) -> None:
        now = time.monotonic()
        if progress.tokens:
            run.pending_tokens.append(progress.tokens)
        # A new turn or tool call goes out at once (they are few, and a follower wants each); streamed tokens
        # are batched to at most PROGRESS_PUBLISH_INTERVAL_S.
        step = (progress.turn, progress.tool, progress.message)
        new_step = bool(progress.message) and progress.turn is not None and step != run.last_step
        if new_step or now - run.last_publish >= PROGRESS_PUBLISH_INTERVAL_S or (progress.percent or 0) >= 100:
            run.last_publish = now
            if new_step:
                run.last_step = step
            tokens, run.pending_tokens = "".join(run.pending_tokens), []
            message = WorkProgress(work_id=run.work_id, attempt_id=run.attempt_id, station_id=self.station_id,
                                   percent=progress.percent, message=progress.message, tokens=tokens,
                                   turn=progress.turn, tool=progress.tool, usage=progress.usage)
            with contextlib.suppress(*NATS_FAILURES):  # live progress is best effort; the record has the rest
                await self.nc.publish(subjects.work_update(self.org, run.work_id, "progress"), encode(message),
                                      headers=tracing.headers())
        if now - run.last_record >= PROGRESS_RECORD_INTERVAL_S:
            run.last_record = now
            first = not run.running_recorded
            run.running_recorded = True  # this write moves Assigned -> Running as well
            try:
                updated = await self._write(run, lambda r: phases.transition(
                    r, P.RUNNING, progress_percent=progress.percent if progress.percent is not None
                    else r.progress_percent, progress_message=progress.message or r.progress_message,
                    last_progress_at=utcnow()))
            except Superseded:
                raise
            except BEST_EFFORT_FAILURES as exc:  # NATS away, a store full: progress is best effort
                log.warning("work %s: could not record progress: %s", run.work_id, exc)
                return
            if first:
                await self.store.emit("work", "started", updated.record)
            await self.store.emit("work", "progress", updated.record, percent=progress.percent,
                                  message=progress.message)

    async def _finish(self, run: Run, phase: WorkPhase, **changes: Any) -> None:
        def finish(r: WorkRecord) -> WorkRecord:
            # Straight from Assigned (short work): the record gets its start time with its outcome.
            started = {"started_at": run.started_at} if r.started_at is None and run.started_at else {}
            if r.cancel_requested:
                return phases.transition(r, P.CANCELLED, reason="cancelled", **started, **run.spent(r))
            return phases.transition(r, phase, **started, **changes, **run.spent(r))

        done = await self._write(run, finish, outcome=True)
        self.completed += 1
        self._observe(run, done.record, done.record.phase.value.lower())
        if done.record.phase == P.ESCALATED:  # counted as written (a cancel may have turned it into Cancelled)
            metrics.WORK_ESCALATED.add(1, {"by": "station"})
        # Waiters need no word from us: the server pushed the stored record on work.{id}.record.
        await self.store.emit("work", done.record.phase.value.lower(), done.record)

    async def _suspend(self, run: Run, waiting: Waiting) -> None:
        """The run waits for a person: recorded (no station holds it, no retry is spent), and said in an event
        naming what to decide. The slot is free as soon as this returns."""
        phase = P.AWAITING_INPUT if waiting.kind == "input" else P.AWAITING_APPROVAL

        def suspend(r: WorkRecord) -> WorkRecord:
            started = {"started_at": run.started_at} if r.started_at is None and run.started_at else {}
            return phases.transition(r, phase, waiting=waiting, reason=f"waiting for {waiting.summary()}",
                                     progress_message=f"waiting for {waiting.summary()}"[:500], **started,
                                     **run.spent(r))

        suspended = await self._write(run, suspend, outcome=True)
        self._observe(run, suspended.record, "suspended")
        what = "approval_requested" if waiting.kind == "approval" else "input_requested"
        await self.store.emit("work", what, suspended.record, tool=waiting.tool, key=waiting.key,
                              arguments=waiting.arguments[:1000], question=waiting.question[:1000],
                              deadline=waiting.deadline_at.isoformat() if waiting.deadline_at else None)

    async def _give_up(self, run: Run, action: Action, reason: str, code: ErrorCode) -> None:
        if action == Action.REQUEUE:
            requeued = await self._write(run, lambda r: phases.transition(r, P.PENDING, reason=reason,
                                                                          retry_at=utcnow(), **run.spent(r)),
                                         outcome=True)
            self._observe(run, requeued.record, "requeued")
            metrics.WORK_REQUEUED.add(1, {"by": "station"})
            await self.store.emit("work", "requeued", requeued.record)
        else:
            await self._finish(run, P.ESCALATED, reason=reason, error=WorkError(code=code, message=reason))

    async def _cancelled(self, run: Run) -> None:
        if run.cancel_reason == "drain":
            requeued = await self._write(run, lambda r: phases.transition(
                r, P.PENDING, reason=f"handed back: station {self.station_id} stopped", retry_at=utcnow()),
                outcome=True)
            self._observe(run, requeued.record, "handed_back")
            metrics.WORK_REQUEUED.add(1, {"by": "drain"})
            await self.store.emit("work", "requeued", requeued.record)
            return
        await self._finish(run, P.CANCELLED, reason=run.cancel_reason or "cancelled")

    async def _rejected(self, run: Run, why: str) -> None:
        self.rejected += 1
        log.warning("work %s: report of superseded attempt %s refused: %s", run.work_id, run.attempt_id, why)

        def count(r: WorkRecord) -> WorkRecord:
            return r.model_copy(update={"rejected_reports": r.rejected_reports + 1})

        with contextlib.suppress(*BEST_EFFORT_FAILURES):  # counting a late report is best effort
            latest = await self.store.mutate(run.work_id, count)
            if latest is not None:
                await self.store.emit("work", "rejected", latest.record, rejected_attempt=run.attempt_id,
                                      rejected_station=self.station_id, why=why)

    # --- cancellation, drain, propulsion ----------------------------------------------------------------------

    async def on_cancel(self, msg: Msg) -> None:
        cancel = decode_or_log(msg.data, WorkCancel, what="cancel", logger=log)
        if cancel is None:
            return
        run = self.runs.get(cancel.work_id)
        if run is not None and run.task is not None and cancel.attempt_id in (None, run.attempt_id):
            run.cancel_reason = cancel.reason or "cancelled"
            run.task.cancel()

    async def hand_back(self, timeout_s: float) -> None:
        """On drain: wait for running work up to ``timeout_s``, then hand what is left back to the lattice."""
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for run in list(self.runs.values()):
            if run.task in pending:
                run.cancel_reason = "drain"
                run.task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    async def resume(self, previous: StationRecord | None = None) -> int:
        """Propulsion: pick up at once the work assigned to this station id that is not finished (we restarted
        mid-work), instead of waiting for the witness to notice. The work the previous run's last beat listed
        (``previous``) is read record by record: the cost follows what this station held, not what the org
        stores. Without that record (it expired: we were down for longer than three beats, and a witness
        requeues what we held) or with a list cut at its bound, the org's records are scanned instead. What the
        previous run accepted after its last beat is requeued by the witness (:func:`..work.policy.decide`)."""
        if previous is not None and len(previous.holding) < MAX_HELD_LISTED:
            found = [v for v in await asyncio.gather(*(self.store.get(w) for w in previous.holding)) if v]
            how = f"the {len(previous.holding)} its last beat listed"
        else:
            found = await self.store.all()
            how = f"a scan of the org's {len(found)} records (no beat of its previous run to go by)"
        resumed = 0
        for versioned in found:
            r = versioned.record
            if r.station_id == self.station_id and r.phase in (P.ASSIGNED, P.RUNNING) and r.attempt_id \
                    and r.work_id not in self.runs and not r.is_workflow:
                log.info("work %s: resuming attempt %s (%s) after restart", r.work_id, r.attempt_id, r.phase)
                self._start(versioned)
                resumed += 1
        if resumed:
            log.info("resumed %d unfinished work item(s) after a restart, found by %s", resumed, how)
        return resumed

"""The witness: finds work that needs a hand and gives it one, idempotently, from any number of processes.

It works from the org's :class:`~.index.WorkIndex` (one watch of the work bucket), never from a read of every
record: each tick it looks only at what is due (a deadline, a backoff, a grace period: a timer heap) and at the
work of stations that are lost or late, so an idle lattice costs it nothing whatever its history. For each record
it looks at, :func:`~.policy.decide` says what to do: schedule what nobody scheduled (its submitter died, it was
unschedulable and a station joined, it waited for room), requeue the attempts of lost or stuck stations, escalate
when retries are exhausted, enforce deadlines, finish cancellations, drive workflows, quarantine a record nobody
can read. Finished records it leaves alone: the server deletes them after the org's retention. Every action is a
CAS that re-checks the decision on the freshest record, so two witnesses never act twice.

The witness holds back while it cannot see the lattice (its own NATS connection is down, or its view of the
registry or the work is being rebuilt), and for a few heartbeats after its view comes back: when NATS restarts,
stations need a moment to reconnect and beat again, and a witness that judged them by their old heartbeats would
requeue work that is still running (and whose outcome is on its way).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from datetime import datetime, timedelta

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError

from ..contract import subjects
from ..contract.codec import encode
from ..contract.errors import DecodeError
from ..contract.messages import ErrorCode, WorkCancel, WorkError, WorkPhase, WorkRecord, utcnow
from ..errors import LatticeError
from ..natsio.retry import BEST_EFFORT_FAILURES, NATS_FAILURES
from ..routing import MISSED_BEATS_LOST, overdue
from ..tasks import stop_task
from ..telemetry import metrics, tracing
from . import phases, waiting, workflow
from .auction import DEFAULT_HEARTBEAT_S, Auctioneer
from .directory import StationDirectory
from .index import WorkIndex
from .journal import JournalStore
from .policy import Action, Decision, WitnessPolicy, decide
from .store import Versioned, WorkStore, encode_payload

log = logging.getLogger(__name__)
P = WorkPhase
#: How long a probe of an overdue station waits for its answer (a timeout proves nothing either way).
PROBE_TIMEOUT_S = 0.5
#: How long a station's answer to a probe keeps it live while its beats are late (it is asked again each tick).
ANSWER_VALID = timedelta(seconds=5)


class Probe(enum.Enum):
    GONE = "no responder"
    THERE = "answered"
    UNSURE = "no answer in time"
#: What a journal purge may meet (NATS away, the stream refusing, an answer that is not JSON) and shrug off.
PURGE_FAILURES: tuple[type[BaseException], ...] = (*BEST_EFFORT_FAILURES, ValueError)


class Witness:
    def __init__(self, nc: NatsClient, store: WorkStore, auctioneer: Auctioneer, directory: StationDirectory,
                 index: WorkIndex, *, policy: WitnessPolicy | None = None, interval_s: float = 1.0) -> None:
        self.nc = nc
        self.store = store
        self.org = store.state.org
        self.auctioneer = auctioneer
        self.directory = directory
        self.index = index
        self.policy = policy or WitnessPolicy()
        self.interval_s = interval_s
        self.actions: dict[str, int] = {}
        #: Ticks run, and records looked at (decided on) in them: what the witness's cost follows.
        self.ticks = 0
        self.examined = 0
        #: Stations proven dead by a probe, with the heartbeat they were last seen with (a new beat revives them).
        self._gone: dict[str, datetime] = {}
        #: Stations late with their beats that answered a probe, and when: they are there (their beats are held
        #: up: the stations bucket has no leader for a few seconds on a cluster), so they keep their work.
        self._answered: dict[str, datetime] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._held_back = False
        self._last_join: datetime | None = None
        #: Stations announced lost, with the heartbeat they were lost with (bounded by the stations known).
        self._announced: dict[str, datetime | None] = {}
        index.on_undecodable = self.quarantine
        index.on_deleted = self.forget
        self.journals = JournalStore(store.state)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="witness")

    async def forget(self, work_id: str) -> None:
        """A record is gone: its run's journal goes with it (best effort: the journal stream's age bound removes
        what a failed purge leaves). Idempotent: several controllers may purge the same journal."""
        try:
            async with asyncio.timeout(5.0):
                await self.journals.purge(work_id)
        except PURGE_FAILURES as exc:
            log.info("work %s: its journal was not deleted with its record: %s", work_id, exc)

    def wake(self) -> None:
        """Look now (a station joined, a submitter asked)."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await stop_task(self._task)

    async def _loop(self) -> None:
        # Python 3.11's wait_for can swallow a cancellation that lands as the awaited thing completes (and a tick
        # awaits many), so the loop also checks a flag: stop() must never wait forever.
        while not self._stopping:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except BEST_EFFORT_FAILURES as exc:
                log.warning("witness tick failed: %s", exc)
            except Exception:  # a bug in one tick must not end the witness: it is logged whole, and the next runs
                log.exception("witness tick failed")
            await self._sleep()

    async def _sleep(self) -> None:
        """Until the next look is due, something changed, or a tick's time (stations may be lost meanwhile)."""
        timeout = self.interval_s
        if (due := self.index.next_due()) is not None:
            timeout = min(timeout, max((due - utcnow()).total_seconds(), 0.0))
        changed = asyncio.ensure_future(self.index.changed.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({changed, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            woken.cancel()
        self.index.changed.clear()
        self._wake.clear()

    # --- one tick ----------------------------------------------------------------------------------------------

    async def tick(self) -> int:
        """Look at what is due and at the work of lost or late stations; returns how many actions were taken."""
        self.ticks += 1
        if not self.nc.is_connected or not self.directory.healthy or not self.index.healthy:
            if not self._held_back:
                log.info("witness holding back: no fresh view of the lattice")
            self._held_back = True
            return 0
        self._held_back = False
        now = utcnow()
        # What is due leaves the index's timers here: until each is handled it is ours to look at again. A tick
        # that fails half way (a NATS request timing out while a JetStream leader is elected) hands what it did
        # not finish back, due a tick from now: dropped, it would wait for a change that may never come (work
        # left Pending for good after a leader loss on a cluster).
        todo = {v.record.work_id: v for v in self.index.due(now)}
        try:
            return await self._handle(todo, now)
        except BaseException:
            again = utcnow() + timedelta(seconds=self.interval_s)
            for versioned in todo.values():
                self.index.recheck(self.index.get(versioned.record.work_id) or versioned, again)
            raise

    async def _handle(self, todo: dict[str, Versioned], now: datetime) -> int:
        """The tick's work: ``todo`` (what is due) and what lost stations held; each is removed from ``todo`` once
        handled."""
        await self._probe(now)
        live = self._live_ids(now)
        for station_id in [s for s in self._announced if s in live]:
            del self._announced[station_id]  # back (restarted): a next loss is announced again
        if self.directory.last_join != self._last_join:
            # A station joined (or restarted): unschedulable work may fit it now, and a restarted station's work
            # that its new run does not hold (accepted after its last beat before the restart) is requeued.
            self._last_join = self.directory.last_join
            todo.update((v.record.work_id, v) for v in self.index.in_phase(P.UNSCHEDULABLE))
            for station in self.index.holding_stations():
                todo.update((v.record.work_id, v) for v in self.index.held_by(station))
        for station in self.index.holding_stations():
            if station not in live:
                await self._announce_lost(station, now)
                for versioned in self.index.held_by(station):
                    todo.setdefault(versioned.record.work_id, versioned)
        taken = 0
        for work_id, versioned in list(todo.items()):
            current = self.index.get(work_id) or versioned
            self.examined += 1
            if current.record.is_workflow:
                taken += await self._drive_workflow(current)
            else:
                decision = self._decide(current.record, live, now)
                if decision.action != Action.NONE:
                    taken += await self.act(current, decision)
                else:
                    # Its next check may be past already (Assigned work queued at its station, past the accept
                    # timeout): looked at again a tick from now, never at once in a loop.
                    self.index.recheck(current, not_before=now + timedelta(seconds=self.interval_s))
            del todo[work_id]
        return taken

    def _decide(self, record: WorkRecord, live: set[str] | None = None, now: datetime | None = None) -> Decision:
        now = now or utcnow()
        return decide(record, live_stations=self._live_ids(now) if live is None else live, now=now,
                      policy=self.policy, station_joined_since=self.directory.last_join,
                      holdings=self.directory.holdings())

    def _live_ids(self, now: datetime) -> set[str]:
        """Stations to consider alive: heartbeating ones, minus those a probe proved dead, plus those given time to
        come back (:meth:`_sheltered`)."""
        live = self.directory.live_ids(now)
        for station_id, when in list(self._answered.items()):
            if now - when <= ANSWER_VALID:
                live.add(station_id)
            else:
                del self._answered[station_id]
        for station_id, beat in list(self._gone.items()):
            record = self.directory.records.get(station_id)
            if record is None or record.last_heartbeat != beat:
                del self._gone[station_id]  # gone from the registry, or beating again (restarted)
            else:
                live.discard(station_id)
        return live | self._sheltered(now)

    def _sheltered(self, now: datetime) -> set[str]:
        """Stations holding work that are not judged yet, for three heartbeats after the view was built: after our
        view came back from an outage, every one (its last beat may be from before; it may be reconnecting);
        on a fresh start, those with no record at all (they may be being restarted, as `lattice up` does, and
        will resume their own work)."""
        since = self.directory.healthy_since
        beats = [r.heartbeat_interval_s for r in self.directory.records.values()] or [DEFAULT_HEARTBEAT_S]
        if since is not None and now - since >= timedelta(seconds=MISSED_BEATS_LOST * max(beats)):
            return set()
        holding = set(self.index.holding_stations()) - set(self._gone)
        if self.directory.resumed or since is None:
            return holding
        return {s for s in holding if s not in self.directory.records}

    async def _probe(self, now: datetime) -> None:
        """Ask the stations that hold work and are late with their beat whether they are there. For a station
        whose connection is gone NATS answers "no responders" at once: its work is requeued now instead of
        after three missed beats. A station that answers is there, however late its beats: it keeps its work
        (for :data:`ANSWER_VALID`, asked again each tick while its beats are late). A probe that times out proves
        nothing (a station too busy to answer is judged by its beats). Not a station given time to come back (it
        may still be reconnecting)."""
        sheltered = self._sheltered(now)
        suspects = [r for sid in self.index.holding_stations()
                    if sid not in sheltered and (r := self.directory.records.get(sid)) is not None
                    and overdue(r, now) and self._gone.get(sid) != r.last_heartbeat]
        if not suspects:
            return
        answers = await asyncio.gather(*(self._ping(r.station_id) for r in suspects))
        for record, answer in zip(suspects, answers, strict=True):
            if answer is Probe.GONE:
                # INFO, like the witness's other actions: the station.lost event records it for everyone.
                log.info("station %s: %.1fs since its last beat and no responder on NATS: lost", record.station_id,
                         record.age_s(now))
                self._gone[record.station_id] = record.last_heartbeat
                self._answered.pop(record.station_id, None)
            elif answer is Probe.THERE:
                if record.station_id not in self._answered:
                    log.info("station %s: %.1fs since its last beat but it answers: its beats are held up, it "
                             "keeps its work", record.station_id, record.age_s(now))
                self._answered[record.station_id] = now

    async def _announce_lost(self, station_id: str, now: datetime) -> None:
        """One ``station.lost`` event per loss (a station that beats again and is lost again is announced again)."""
        record = self.directory.records.get(station_id)
        beat = record.last_heartbeat if record is not None else None
        if station_id in self._announced and self._announced[station_id] == beat:
            return
        self._announced[station_id] = beat
        age = round(record.age_s(now), 1) if record is not None else None
        log.info("station %s lost (last heartbeat %s s ago): its work is requeued", station_id, age)
        await self.store.note("station", "lost", subject=station_id, seconds_since_heartbeat=age,
                              proven_by="heartbeats" if station_id not in self._gone else "probe")

    async def _ping(self, station_id: str) -> Probe:
        try:
            await self.nc.request(subjects.station_ping(self.org, station_id), b"", timeout=PROBE_TIMEOUT_S)
        except NoRespondersError:
            return Probe.GONE
        except NATS_FAILURES:  # a timeout or a connection blip: proves nothing, as documented above
            return Probe.UNSURE
        return Probe.THERE

    # --- acting --------------------------------------------------------------------------------------------------

    async def act(self, versioned: Versioned, decision: Decision) -> int:
        action = decision.action
        if action == Action.SCHEDULE:
            result = await self.auctioneer.schedule(versioned)
            return self._count(action, result)

        # The witness's action joins the work's trace (from the record: no message started it).
        r = versioned.record
        with tracing.span(f"lattice.witness.{action.value}", parent=tracing.incoming(None, r.traceparent),
                          attributes={"lattice.org": self.org, "lattice.work.id": r.work_id,
                                      "lattice.work.attempt": r.attempt, "lattice.station.id": r.station_id,
                                      "lattice.reason": decision.reason}):
            return await self._act(versioned, action)

    async def _act(self, versioned: Versioned, action: Action) -> int:
        def apply(r: WorkRecord) -> WorkRecord | None:
            fresh = self._decide(r)  # the freshest record must still call for this action
            if fresh.action != action:
                return None
            return _apply(r, fresh)

        result = await self.store.mutate(versioned.record.work_id, apply, current=versioned)
        if result is None:
            return 0
        self.index.put(result)
        record = result.record
        event = {Action.REQUEUE: "requeued", Action.ESCALATE: "escalated", Action.FAIL: "failed",
                 Action.CANCEL: "cancelled", Action.TIME_OUT_WAIT: "wait_timed_out"}[action]
        if action == Action.REQUEUE:
            metrics.WORK_REQUEUED.add(1, {"by": "witness"})
        elif action == Action.ESCALATE:
            metrics.WORK_ESCALATED.add(1, {"by": "witness"})
        log.info("witness: work %s %s: %s", record.work_id, event, record.reason)
        await self.store.emit("work", event, record, witness=True)
        held = versioned.record.phase in (P.ASSIGNED, P.RUNNING) and versioned.record.station_id
        if held and action in (Action.REQUEUE, Action.FAIL, Action.ESCALATE):
            # Tell the station to stop, in case it is alive (cut off, or past a deadline it did not enforce): its
            # writes are fenced anyway, but its run would go on spending.
            with contextlib.suppress(*NATS_FAILURES):
                await self.nc.publish(subjects.work_cancel(self.org, versioned.record.station_id or ""),
                                      encode(WorkCancel(work_id=record.work_id, attempt_id=versioned.record.attempt_id,
                                                        reason=f"{event} by the witness: {record.reason}")))
        if action in (Action.REQUEUE, Action.TIME_OUT_WAIT):
            await self.auctioneer.schedule(result)
        return self._count(action, result)

    def _count(self, action: Action, result: object) -> int:
        if result is None:
            return 0
        self.actions[action.value] = self.actions.get(action.value, 0) + 1
        return 1

    async def quarantine(self, work_id: str, revision: int, data: bytes, exc: DecodeError) -> None:
        """A stored record nobody can decode: replace it (once, CAS on its revision) by a Failed record that says
        why, keeping its bytes in the results store, so that waiters get an answer and nobody reads it again."""
        try:
            replaced = await self.store.quarantine(work_id, revision, data, str(exc))
        except LatticeError as err:
            log.warning("work %s: could not quarantine its unreadable record: %s", work_id, err)
            return
        if replaced is not None:
            self._count(Action.FAIL, replaced)
            log.warning("work %s: unreadable record quarantined: %s", work_id, replaced.record.reason)

    async def _children(self, record: WorkRecord) -> dict[int, Versioned | None]:
        """The children of the workflow's ready steps (the only ones that can be running), by step index."""
        found: dict[int, Versioned | None] = {}
        for index in workflow.ready(record):
            key = workflow.child_id(record.work_id, index)
            found[index] = self.index.get(key) or await self.store.get(key)
        return found

    async def _drive_workflow(self, parent: Versioned) -> int:
        record = parent.record
        children = await self._children(record)
        updated = await self.store.mutate(record.work_id, lambda r: workflow.advance(
            r, {i: c.record if c else None for i, c in children.items()}), current=parent)
        current = updated or parent
        if updated is not None:
            self.index.put(updated)
            await self.store.emit("work", _workflow_event(updated.record), updated.record,
                                  step=updated.record.step_index)
            if updated.record.phase.terminal:
                return 1
        rec = current.record
        if rec.phase != P.RUNNING:
            return 1 if updated is not None else 0
        started = children if updated is None else await self._children(rec)
        for index, child in started.items():
            if child is None and not await self._start_step(current, index):
                return 1
        return 1 if updated is not None else 0

    async def _start_step(self, current: Versioned, index: int) -> bool:
        """Submit step ``index`` of the workflow (its dependencies have succeeded); False if the workflow failed
        instead (the step's input could not be made)."""
        rec = current.record
        key = workflow.child_id(rec.work_id, index)
        step = rec.spec.steps[index]
        try:
            loaded = {name: await self.store.load_ref(rec.step_output_refs[name])
                      for name in workflow.referenced_steps(step.input) if name in rec.step_output_refs}
            spec = workflow.step_spec(rec, step, loaded)
            size = len(encode_payload(spec.input))
            if size > self.store.state.limits.max_value_bytes // 2:
                raise ValueError(f"step {step.name!r}: its input is {size} bytes once its template is "
                                 f"filled, over the {self.store.state.limits.max_value_bytes // 2} a work "
                                 "record carries; a step's output may be large, its input may not: pass "
                                 "a part of it, or let the step fetch it")
        except (KeyError, ValueError, NotFoundError) as exc:
            # A step it names has no output, an input too large, a stored output gone (past retention),
            # the workflow's deadline passed.
            late = isinstance(exc, workflow.DeadlinePassed)
            error = WorkError(code=ErrorCode.TIMEOUT if late else ErrorCode.BAD_REQUEST,
                              message=str(exc) or type(exc).__name__)
            why = error.message if late else "bad step input"
            await self.store.mutate(rec.work_id, lambda r: None if r.phase.terminal else
                                    phases.transition(r, P.FAILED, error=error, reason=why))
            return False
        except NATS_FAILURES:  # the results store did not answer: look again shortly
            self.index.recheck(current, utcnow() + timedelta(seconds=1))
            return True
        # The step joins the workflow's trace (no message started this: the record carries it).
        with tracing.span("lattice.workflow.step", parent=tracing.incoming(None, rec.traceparent),
                          attributes={"lattice.work.id": rec.work_id, "lattice.workflow.step": step.name}):
            await self.auctioneer.submit(spec, work_id=key, parent_id=rec.work_id)
        return True


def _workflow_event(record: WorkRecord) -> str:
    return {P.SUCCEEDED: "succeeded", P.FAILED: "failed", P.CANCELLED: "cancelled"}.get(record.phase, "progress")


def _apply(record: WorkRecord, decision: Decision) -> WorkRecord:
    action, reason = decision.action, decision.reason
    if action == Action.REQUEUE:
        return phases.transition(record, P.PENDING, reason=reason, retry_at=utcnow())
    if action in (Action.ESCALATE, Action.FAIL):
        return phases.transition(record, P.ESCALATED if action == Action.ESCALATE else P.FAILED, reason=reason,
                                 error=WorkError(code=decision.code, message=reason))
    if action == Action.CANCEL:
        return phases.transition(record, P.CANCELLED, reason=reason)
    if action == Action.TIME_OUT_WAIT:
        return waiting.timed_out(record)
    raise ValueError(f"witness cannot apply {action}")

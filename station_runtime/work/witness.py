"""The witness: finds work that needs a hand and gives it one, idempotently, from any number of processes.

Each sweep reads the org's work records and applies :func:`~.policy.decide` to each: schedule what nobody
scheduled (its submitter died, it was unschedulable and a station joined), requeue the attempts of lost or stuck
stations, escalate when retries are exhausted, enforce deadlines, finish cancellations, drive workflows, purge old
records. Every action is a CAS that re-checks the decision on the freshest record, so two witnesses never act
twice. The witness holds back while it cannot see the registry (its own NATS connection is down): a blind
witness must not declare every station lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError

from ..contract import subjects
from ..contract.codec import encode
from ..contract.messages import (
    ErrorCode,
    StationRecord,
    WorkCancel,
    WorkError,
    WorkPhase,
    WorkRecord,
    utcnow,
)
from ..routing import overdue
from . import phases, workflow
from .auction import Auctioneer
from .directory import StationDirectory
from .policy import Action, Decision, WitnessPolicy, decide
from .store import Versioned, WorkStore

log = logging.getLogger(__name__)
P = WorkPhase
#: How long a probe of an overdue station waits for its answer (a timeout proves nothing either way).
PROBE_TIMEOUT_S = 0.5


class Witness:
    def __init__(self, nc: NatsClient, store: WorkStore, auctioneer: Auctioneer, directory: StationDirectory,
                 *, policy: WitnessPolicy | None = None, interval_s: float = 1.0) -> None:
        self.nc = nc
        self.store = store
        self.org = store.state.org
        self.auctioneer = auctioneer
        self.directory = directory
        self.policy = policy or WitnessPolicy()
        self.interval_s = interval_s
        self.actions: dict[str, int] = {}
        #: Stations proven dead by a probe, with the heartbeat they were last seen with (a new beat revives them).
        self._gone: dict[str, datetime] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="witness")

    def wake(self) -> None:
        """Sweep now (a station joined, a submitter asked)."""
        self._wake.set()

    async def on_station_join(self, _: StationRecord) -> None:
        self.wake()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        # Python 3.11's wait_for can swallow a cancellation that lands as the awaited thing completes (and the
        # sweep awaits many), so the loop also checks a flag: stop() must never wait forever.
        while not self._stopping:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("witness sweep failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def sweep(self) -> int:
        """One pass over every record; returns how many actions were taken."""
        if not self.nc.is_connected or not self.directory.healthy:
            log.info("witness holding back: no fresh view of the lattice")
            return 0
        records = await self.store.all()
        await self._probe(records)
        by_id = {v.record.work_id: v for v in records}
        # One view of the registry for the whole pass (every action re-decides on a fresh one before it writes).
        live = self._live_ids()
        taken = 0
        for versioned in records:
            if versioned.record.is_workflow:
                taken += await self._drive_workflow(versioned, by_id)
                continue
            decision = self._decide(versioned.record, live)
            if decision.action != Action.NONE:
                taken += await self.act(versioned, decision)
        return taken

    def _decide(self, record: WorkRecord, live: set[str] | None = None) -> Decision:
        return decide(record, live_stations=self._live_ids() if live is None else live, now=utcnow(),
                      policy=self.policy, station_joined_since=self.directory.last_join)

    def _live_ids(self) -> set[str]:
        live = self.directory.live_ids()
        for station_id, beat in list(self._gone.items()):
            record = self.directory.records.get(station_id)
            if record is None or record.last_heartbeat != beat:
                del self._gone[station_id]  # gone from the registry, or beating again (restarted)
            else:
                live.discard(station_id)
        return live

    async def _probe(self, records: list[Versioned]) -> None:
        """Ask the stations that hold work and are late with their beat whether they are there. For a station
        whose connection is gone NATS answers "no responders" at once: its work is requeued now instead of
        after three missed beats. A slow station that answers, or a probe that times out, proves nothing."""
        holding = {v.record.station_id for v in records if v.record.phase in (P.ASSIGNED, P.RUNNING)}
        now = utcnow()
        suspects = [r for sid, r in self.directory.records.items()
                    if sid in holding and overdue(r, now) and self._gone.get(sid) != r.last_heartbeat]
        if not suspects:
            return
        answers = await asyncio.gather(*(self._ping(r.station_id) for r in suspects))
        for record, gone in zip(suspects, answers, strict=True):
            if gone:
                log.warning("station %s: %.1fs since its last beat and no responder on NATS: lost", record.station_id,
                            record.age_s(now))
                self._gone[record.station_id] = record.last_heartbeat

    async def _ping(self, station_id: str) -> bool:
        """True if NATS says nobody answers for the station."""
        try:
            await self.nc.request(subjects.station_ping(self.org, station_id), b"", timeout=PROBE_TIMEOUT_S)
        except NoRespondersError:
            return True
        except Exception:
            return False
        return False

    async def act(self, versioned: Versioned, decision: Decision) -> int:
        action = decision.action
        if action == Action.SCHEDULE:
            result = await self.auctioneer.schedule(versioned)
            return self._count(action, versioned, result)
        if action == Action.PURGE:
            return self._count(action, versioned, versioned if await self.store.purge(versioned) else None)

        def apply(r: WorkRecord) -> WorkRecord | None:
            fresh = self._decide(r)  # the freshest record must still call for this action
            if fresh.action != action:
                return None
            return _apply(r, action, fresh.reason)

        result = await self.store.mutate(versioned.record.work_id, apply, current=versioned)
        if result is None:
            return 0
        record = result.record
        event = {Action.REQUEUE: "requeued", Action.ESCALATE: "escalated", Action.FAIL: "failed",
                 Action.CANCEL: "cancelled"}[action]
        log.info("witness: work %s %s: %s", record.work_id, event, record.reason)
        await self.store.emit("work", event, record, witness=True)
        if action == Action.REQUEUE:
            if versioned.record.station_id:
                # Tell the old station to stop, in case it is alive but cut off (its writes are fenced anyway).
                with contextlib.suppress(Exception):
                    await self.nc.publish(subjects.work_cancel(self.org, versioned.record.station_id),
                                          encode(WorkCancel(work_id=record.work_id,
                                                            attempt_id=versioned.record.attempt_id,
                                                            reason="requeued by the witness")))
            await self.auctioneer.schedule(result)
        return self._count(action, versioned, result)

    def _count(self, action: Action, _: Versioned, result: object) -> int:
        if result is None:
            return 0
        self.actions[action.value] = self.actions.get(action.value, 0) + 1
        return 1

    async def _drive_workflow(self, parent: Versioned, by_id: dict[str, Versioned]) -> int:
        record = parent.record
        if record.phase.terminal:
            if decide(record, live_stations=(), now=utcnow(), policy=self.policy).action == Action.PURGE:
                await self.store.purge(parent)
            return 0
        child_key = workflow.child_id(record.work_id, record.step_index)
        child = by_id.get(child_key)
        updated = await self.store.mutate(record.work_id, lambda r: workflow.advance(r, child.record if child
                                                                                    else None), current=parent)
        current = updated or parent
        if updated is not None:
            await self.store.emit("work", _workflow_event(updated.record), updated.record,
                                  step=updated.record.step_index)
            if updated.record.phase.terminal:
                return 1
        rec = current.record
        if rec.phase == P.RUNNING:
            key = workflow.child_id(rec.work_id, rec.step_index)
            if key not in by_id or updated is not None:
                step = rec.spec.steps[rec.step_index]
                try:
                    spec = workflow.step_spec(rec, step)
                except KeyError as exc:
                    error = WorkError(code=ErrorCode.BAD_REQUEST, message=str(exc))
                    await self.store.mutate(rec.work_id, lambda r: None if r.phase.terminal else
                                            phases.transition(r, P.FAILED, error=error, reason="bad step input"))
                    return 1
                await self.auctioneer.submit(spec, work_id=key, parent_id=rec.work_id)
        return 1 if updated is not None else 0


def _workflow_event(record: WorkRecord) -> str:
    return {P.SUCCEEDED: "succeeded", P.FAILED: "failed", P.CANCELLED: "cancelled"}.get(record.phase, "progress")


def _apply(record: WorkRecord, action: Action, reason: str) -> WorkRecord:
    if action == Action.REQUEUE:
        return phases.transition(record, P.PENDING, reason=reason, retry_at=utcnow())
    if action == Action.ESCALATE:
        return phases.transition(record, P.ESCALATED, reason=reason,
                                 error=WorkError(code=ErrorCode.INTERNAL, message=reason))
    if action == Action.FAIL:
        return phases.transition(record, P.FAILED, reason=reason,
                                 error=WorkError(code=ErrorCode.TIMEOUT, message=reason))
    if action == Action.CANCEL:
        return phases.transition(record, P.CANCELLED, reason=reason)
    raise ValueError(f"witness cannot apply {action}")

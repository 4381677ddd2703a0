"""The ``agent.invoke`` request/reply service with a concurrency cap.

nats-py runs a subscription's callbacks one at a time, so the callback only admits the request and spawns a task:
one slow agent never stalls the others. At most ``max_concurrency`` runs execute at once; up to ``queue_limit``
more wait; beyond that a request is answered ``busy`` at once so that the caller can try another station.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from nats.aio.msg import Msg
from pydantic import ValidationError

from ..contract.codec import decode, encode
from ..contract.errors import DecodeError
from ..contract.messages import ErrorCode, InvokeError, InvokeRequest, InvokeResult, utcnow
from ..executors import AgentFailure, Execution
from ..natsio.retry import NATS_FAILURES
from ..telemetry import tracing
from ..work.scoring import Requirements
from . import admission
from .agents import AgentHost, HostedAgent
from .delegation import Delegation

log = logging.getLogger(__name__)


class Slots:
    """Counts running and waiting runs against the cap; shared by invoke and work execution.

    A request is counted the moment it is admitted (:meth:`reserve`), before its task starts, so that a burst
    cannot overshoot the queue; the task then turns its :class:`Reservation` into a run, waiting for a free run
    slot, or gives it back if it never runs."""

    def __init__(self, capacity: int, queue_limit: int) -> None:
        self.capacity = capacity
        self.queue_limit = queue_limit
        self._sem = asyncio.Semaphore(capacity)
        self.running = 0
        self.waiting = 0

    @property
    def load(self) -> int:
        return self.running + self.waiting

    def full(self) -> bool:
        return self.load >= self.capacity + self.queue_limit

    def reserve(self) -> Reservation:
        self.waiting += 1
        return Reservation(self)

    def _unreserve(self) -> None:
        self.waiting -= 1

    @contextlib.asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        await self._sem.acquire()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()


class Reservation:
    """One admitted request's place in the queue: :meth:`run` it once, or :meth:`cancel` it (idempotent)."""

    def __init__(self, slots: Slots) -> None:
        self._slots = slots
        self._open = True

    def cancel(self) -> None:
        if self._open:
            self._open = False
            self._slots._unreserve()

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Wait for a free run slot (the reservation counts as waiting meanwhile) and hold it for the block."""
        if not self._open:
            raise RuntimeError("a reservation runs once")
        try:
            async with self._slots._run():
                self.cancel()  # now counted as running
                yield
        finally:
            self.cancel()


def pick_agent(agents: AgentHost, request: InvokeRequest) -> HostedAgent | InvokeError:
    req = Requirements(agent=request.agent, capabilities=(request.capability,) if request.capability else ())
    if not req.agent and not req.capabilities:
        return InvokeError(request_id=request.request_id, code=ErrorCode.BAD_REQUEST,
                           message="invoke request names neither an agent nor a capability")
    name = admission.pick_agent(agents.hosted(), req)
    if name is None:
        what = f"agent {request.agent!r} is" if request.agent else f"no agent with capability {request.capability!r} is"
        return InvokeError(request_id=request.request_id, code=ErrorCode.NOT_FOUND,
                           message=f"{what} hosted on this station")
    agent = agents.get(name)
    assert agent is not None
    return agent


class InvokeService:
    def __init__(self, station_id: str, agents: AgentHost, slots: Slots, is_draining: Callable[[], bool],
                 delegation: Delegation | None = None) -> None:
        self.station_id = station_id
        self.delegation = delegation
        self.agents = agents
        self.slots = slots
        self.is_draining = is_draining
        self.tasks: set[asyncio.Task[None]] = set()
        self.served = 0
        self.rejected = 0

    async def on_message(self, msg: Msg) -> None:
        """Subscription callback: admit or refuse at once, never run the agent here."""
        if self.is_draining():
            await self._reply(msg, InvokeError(station_id=self.station_id, code=ErrorCode.DRAINING,
                                               message="station is draining; try another station"))
            return
        if self.slots.full():
            self.rejected += 1
            await self._reply(msg, InvokeError(station_id=self.station_id, code=ErrorCode.BUSY,
                                               message=f"station at capacity ({self.slots.load} runs)"))
            return
        task = asyncio.create_task(self._serve(msg, self.slots.reserve()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, msg: Msg, reservation: Reservation) -> None:
        try:
            with tracing.span("lattice.invoke", kind="server", parent=tracing.incoming(msg.headers),
                              attributes={"lattice.station.id": self.station_id}) as span:
                reply = await self._handle(msg, reservation)
                if isinstance(reply, InvokeError):
                    tracing.failed(span, f"{reply.code}: {reply.message}")
        except Exception as exc:  # a bug must cost one request, never the station
            log.exception("invoke failed unexpectedly")
            reply = InvokeError(station_id=self.station_id, code=ErrorCode.INTERNAL, message=str(exc))
        finally:
            reservation.cancel()
        await self._reply(msg, reply)

    async def _handle(self, msg: Msg, reservation: Reservation) -> InvokeResult | InvokeError:
        try:
            request = decode(msg.data, InvokeRequest)
        except DecodeError as exc:
            log.warning("bad invoke request on %s: %s", msg.subject, exc)
            return InvokeError(station_id=self.station_id, code=ErrorCode.BAD_REQUEST, message=str(exc))
        picked = pick_agent(self.agents, request)
        if isinstance(picked, InvokeError):
            return picked.model_copy(update={"station_id": self.station_id})
        deadline = time.monotonic() + request.timeout_s
        async with reservation.run():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._error(request, ErrorCode.TIMEOUT, "timed out waiting for a free slot")
            started = utcnow()
            picked.acquire()
            try:
                async with asyncio.timeout(remaining):
                    outcome = await picked.executor.run(Execution(
                        input=request.input, context=request.context, request_id=request.request_id,
                        inherited_budget=request.budget, depth=request.depth, deadline_s=remaining,
                        delegate=self.delegation.for_run(retries=0) if self.delegation else None))
            except TimeoutError:
                return self._error(request, ErrorCode.TIMEOUT, f"agent did not finish within {request.timeout_s}s")
            except AgentFailure as exc:
                return self._error(request, exc.code, str(exc)).model_copy(update={"usage": exc.usage})
            finally:
                picked.release()
        self.served += 1
        try:
            return InvokeResult(request_id=request.request_id, station_id=self.station_id, agent=picked.name,
                                output=outcome.output, usage=outcome.usage, started_at=started,
                                finished_at=utcnow())
        except ValidationError:
            return self._error(request, ErrorCode.AGENT_ERROR,
                               f"agent returned a value that is not JSON: {type(outcome.output).__name__}")

    def _error(self, request: InvokeRequest, code: ErrorCode, message: str) -> InvokeError:
        return InvokeError(request_id=request.request_id, station_id=self.station_id, code=code, message=message)

    @staticmethod
    async def _reply(msg: Msg, reply: InvokeResult | InvokeError) -> None:
        if not msg.reply:
            return
        try:
            await msg.respond(encode(reply))
        except NATS_FAILURES as exc:  # the caller's timeout tells it
            log.warning("could not send invoke reply: %s", exc)

"""The station: connects, opens its org's state, loads its agents, serves invokes, heartbeats, and drains.

Lifecycle::

    start():  connect (unlimited reconnects) -> open buckets -> load agents -> subscribe -> announce -> heartbeat
    stop():   status=draining (new requests refused) -> wait for in-flight runs (drain timeout) -> goodbye
              (record deleted) -> unsubscribe -> drain the connection
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import BucketNotFoundError

from ..contract import subjects
from ..contract.messages import StationStatus
from ..natsio.connect import connect
from ..natsio.events import EventPublisher
from ..natsio.retry import BEST_EFFORT_FAILURES, NATS_FAILURES
from ..natsio.state import OrgState, StateLimits
from ..tasks import stop_task
from ..work.store import WorkStore
from .agents import AgentHost
from .creds import CredsFollower
from .delegation import Delegation
from .health import HealthServer
from .invoke import InvokeService, Slots
from .presence import Presence, StationSnapshot
from .settings import StationSettings
from .work import WorkService

log = logging.getLogger(__name__)

#: On stop, each goodbye to NATS (last heartbeat, goodbye, drain) waits at most this long: when NATS went away at
#: the same moment (its parent `lattice up` was killed), a station still exits within seconds, not after nats-py's
#: request and drain timeouts one after another.
STOP_NATS_TIMEOUT_S = 2.0


class Station:
    def __init__(self, settings: StationSettings) -> None:
        self.settings = settings
        self.slots = Slots(settings.max_concurrency, settings.queue_limit)
        self.draining = False
        self.nc: NatsClient | None = None
        self.state: OrgState | None = None
        self.agents: AgentHost | None = None
        self.presence: Presence | None = None
        self.invoke: InvokeService | None = None
        self.events: EventPublisher | None = None
        self.work: WorkService | None = None
        self.delegation: Delegation | None = None
        self._subs: list[Subscription] = []
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._creds: CredsFollower | None = None
        self._creds_task: asyncio.Task[None] | None = None
        #: Set when nats-py closed the connection for good (a server error it does not reconnect after, such as
        #: expired creds or an account limit): the station exits so that its supervisor starts it again.
        self.connection_closed = asyncio.Event()
        self._health: HealthServer | None = None
        self._stopped = asyncio.Event()
        self._started = False

    @property
    def id(self) -> str:
        return self.settings.station_id

    def ready(self) -> bool:
        return self._started and not self.draining and self.nc is not None and self.nc.is_connected

    def _snapshot(self) -> StationSnapshot:
        host = self.agents
        return StationSnapshot(load=self.slots.load, agents=list(host.agents) if host else [],
                               agent_capabilities=host.capabilities() if host else set(),
                               status=StationStatus.DRAINING if self.draining else StationStatus.READY,
                               agent_errors=dict(host.load_errors) if host else {},
                               agent_tools=host.tools() if host else {},
                               holding=list(self.work.runs) if self.work else [])

    async def start(self) -> None:
        s = self.settings
        if s.health_port is not None:
            self._health = HealthServer(s.health_port, self.ready)
            await self._health.start()
        self.nc = await connect(dataclasses.replace(s.nats, name=f"station-{s.org}-{s.station_id}"),
                                on_reconnect=self._on_reconnect, on_closed=self._on_closed)
        if s.nats.creds_file is not None:  # creds that end are renewed in place: move to them in time
            self._creds = CredsFollower(s.nats.creds_file, self.nc.force_reconnect)
            self._creds_task = asyncio.create_task(self._creds.run(), name="creds")
        # With creds (JWT mode) a station may not create streams: the operator prepares the org's state first.
        try:
            self.state = await OrgState.open(self.nc, s.org, StateLimits.from_env(presence_ttl_s=s.presence_ttl_s),
                                             create=s.nats.creds_file is None)
        except BucketNotFoundError as exc:
            raise RuntimeError(f"org {s.org!r} has no lattice state yet: the operator (or `lattice up`) prepares "
                               "it before stations start; check that it runs for this org") from exc
        self.events = EventPublisher(self.nc, s.org, f"station/{s.station_id}")
        self.presence = Presence(self.nc, self.state.stations, s, self._snapshot)
        if self.state.presence_ttl_s < s.heartbeat_interval_s * 2:
            # The bucket was created by someone with a shorter TTL: beat fast enough not to expire between beats.
            self.presence.heartbeat_interval_s = self.state.presence_ttl_s / 3
            log.warning("the org's presence TTL is %.1fs; beating every %.2fs instead of %.1fs",
                        self.state.presence_ttl_s, self.presence.heartbeat_interval_s, s.heartbeat_interval_s)
        self.agents = AgentHost(self.state, s.org, s.labels, s.agent_selector, self._agents_changed)
        await self.agents.start()
        self.delegation = Delegation(self.nc, self.state, s.station_id)
        self.invoke = InvokeService(s.station_id, self.agents, self.slots, lambda: self.draining, self.delegation)
        self._subs.append(await self.nc.subscribe(subjects.agent_invoke(s.org, s.station_id),
                                                  cb=self.invoke.on_message, pending_msgs_limit=65536))
        self.work = WorkService(self.nc, s, WorkStore(self.state, self.events), self.agents, self.slots,
                                lambda: self.draining, self.delegation)
        self._subs.extend(await self.work.subscribe())
        self._subs.append(await self.nc.subscribe(subjects.station_ping(s.org, s.station_id), cb=self._on_ping))
        await self.nc.flush()
        # What this station id held when it last stopped, read before our first beat overwrites it; resumed
        # before that beat, so that the beat lists it (the witness requeues at once work of ours a beat of this
        # run does not list: the previous run took it down).
        previous = await self.presence.previous()
        await self.work.resume(previous)
        record = await self.presence.announce()
        self._started = True
        await self.events.emit("station", "joined", subject=s.station_id,
                               data={"agents": record.agents, "capabilities": record.capabilities,
                                     "capacity": record.capacity, "labels": record.labels})
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        log.info("station %s/%s up: %d agent(s) %s, capacity %d", s.org, s.station_id, len(record.agents),
                 record.agents, record.capacity)

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(*NATS_FAILURES):
                await msg.respond(b"")

    async def _agents_changed(self) -> None:
        if self._started and self.presence is not None:
            with contextlib.suppress(*NATS_FAILURES):
                await self.presence.announce()

    async def _on_closed(self) -> None:
        if not self._stopped.is_set():
            self.connection_closed.set()

    async def _on_reconnect(self) -> None:
        if self.agents is not None:
            self.agents.rewatch()
        if self.delegation is not None:
            await self.delegation.reconnected()
        if self._started and self.presence is not None:
            with contextlib.suppress(*NATS_FAILURES):
                await self.presence.heartbeat()

    async def _heartbeat_loop(self) -> None:
        assert self.presence is not None
        failing = False
        # The loop also ends by itself once the station stops: Python 3.11's wait_for (inside nats-py's request)
        # swallows a cancel that lands as the reply arrives, and a loop that only ends when cancelled would then
        # beat on and hang the stop that waits for it.
        while not self._stopped.is_set():
            await asyncio.sleep(self.presence.heartbeat_interval_s)
            if self._stopped.is_set():
                return
            try:
                await self.presence.heartbeat()
            except BEST_EFFORT_FAILURES as exc:  # NATS down: keep beating, the reconnect catches up
                if not failing:  # once per outage: the connection's own log says when it is back
                    log.warning("heartbeat failed (%s); beating on until NATS answers", exc or type(exc).__name__)
                failing = True
            else:
                failing = False

    async def stop(self, reason: str = "shutdown") -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        s = self.settings
        self.draining = True
        log.info("station %s draining (%s): %d run(s) in flight", s.station_id, reason, self.slots.load)
        online = self.nc is not None and self.nc.is_connected
        if self.presence is not None and self._started and online:
            with contextlib.suppress(*NATS_FAILURES):  # tell the lattice at once that we take nothing new
                async with asyncio.timeout(STOP_NATS_TIMEOUT_S):
                    await self.presence.heartbeat()
        if self.work is not None:
            await self.work.hand_back(s.drain_timeout_s)
        if self.invoke is not None and self.invoke.tasks:
            _, pending = await asyncio.wait(set(self.invoke.tasks), timeout=s.drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("abandoned %d run(s) after the %.0fs drain timeout", len(pending), s.drain_timeout_s)
        await stop_task(self._creds_task)
        if self._heartbeat_task is not None:
            # Wait for it to stop: a beat's write cancelled in flight may still land, and the goodbye below must
            # come after it (else the record it deletes is already a revision older than the one stored).
            await stop_task(self._heartbeat_task, STOP_NATS_TIMEOUT_S)
        # Without NATS there is nobody to say goodbye to: the registry forgets us by itself.
        online = self.nc is not None and self.nc.is_connected
        if self.presence is not None and self._started and online:
            with contextlib.suppress(*NATS_FAILURES):
                async with asyncio.timeout(STOP_NATS_TIMEOUT_S):
                    await self.presence.goodbye(reason)
        if self.events is not None and self._started and online:
            await self.events.emit("station", "left", subject=s.station_id, data={"reason": reason})
        for sub in self._subs:
            with contextlib.suppress(*NATS_FAILURES):
                await sub.unsubscribe()
        if self.agents is not None:
            await self.agents.stop()
        if self.delegation is not None:
            await self.delegation.close()
        if self.nc is not None:
            try:
                async with asyncio.timeout(STOP_NATS_TIMEOUT_S):
                    await self.nc.drain()
            except NATS_FAILURES:  # NATS went away with us (`lattice up` killed): nothing left to flush to
                with contextlib.suppress(*NATS_FAILURES):
                    await self.nc.close()
        if self._health is not None:
            await self._health.stop()
        log.info("station %s stopped", s.station_id)


async def run_station(settings: StationSettings) -> int:
    """Run until SIGTERM/SIGINT, then drain. The entry point of ``lattice station run``."""
    station = Station(settings)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    try:
        await station.start()
    except Exception as exc:  # whatever stops a start (no NATS, no state, a bad agent), the station says it and
        log.error("station %s could not start: %s", settings.station_id, exc)  # exits 1 for its supervisor
        await station.stop("failed to start")
        return 1
    stopped = asyncio.create_task(stop_requested.wait())
    closed = asyncio.create_task(station.connection_closed.wait())
    await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    closed.cancel()
    if station.connection_closed.is_set() and not stop_requested.is_set():
        log.error("station %s: its NATS connection was closed for good (%s); exiting so that its supervisor "
                  "starts it again", settings.station_id, station.nc.last_error if station.nc else "?")
        await _bounded_stop(station, "connection closed")
        return 1
    return 0 if await _bounded_stop(station, "signal") else 1


#: What a stop may take beyond the drain timeout (the goodbye, the connection's drain) before the process leaves.
STOP_MARGIN_S = 15.0


async def _bounded_stop(station: Station, reason: str) -> bool:
    """Stop, but not for ever: a run's outcome is written back until NATS answers, which is right while the
    station runs and wrong once it was told to go with NATS gone (its parent killed with everything it started:
    nobody is left to kill it, and it would wait for a server that never comes back). The work it leaves is
    requeued by the witness and resumed from its journal. False when the stop was cut short."""
    try:
        async with asyncio.timeout(station.settings.drain_timeout_s + STOP_MARGIN_S):
            await station.stop(reason)
    except TimeoutError:
        log.error("station %s: stopping took longer than its drain timeout + %.0fs (NATS unreachable?); leaving "
                  "what is left to the witness", station.settings.station_id, STOP_MARGIN_S)
        return False
    return True

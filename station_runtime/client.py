"""A client of a running lattice, for the CLI, ``lattice up``, the demo and the operator.

Everything it knows comes from NATS (KV and subjects), never from another process's memory: any process that can
reach the lattice sees the same stations, agents and results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from pydantic import ValidationError

from .api.models import Agent, ToolServer, WorkItemSpec, referenced_servers, resolve_tool_servers
from .contract import subjects
from .contract.codec import decode, decode_invoke_reply, encode
from .contract.errors import DecodeError
from .contract.events import CloudEvent
from .contract.messages import (
    AgentDefinition,
    ErrorCode,
    InvokeError,
    InvokeRequest,
    InvokeResult,
    JournalEntry,
    Payload,
    StationRecord,
    WorkCancel,
    WorkPhase,
    WorkProgress,
    WorkRecord,
    utcnow,
)
from .contract.specs import Budget, McpServerSpec
from .errors import AccountLimitError, LatticeError, NoLatticeError, NoStationError, RetryLater
from .natsio.connect import NatsSettings, connect
from .natsio.events import EventPublisher, read_events
from .natsio.retry import NATS_FAILURES, retry_transient
from .natsio.state import OrgState, StateLimits
from .routing import candidates
from .telemetry import tracing
from .work import phases, waiting
from .work.auction import AuctionConfig, Auctioneer
from .work.controller import OrgWork
from .work.directory import StationDirectory
from .work.journal import JournalStore
from .work.policy import WitnessPolicy
from .work.store import Versioned, WorkStore

log = logging.getLogger(__name__)


#: How soon a caller may try an invoke again that every station refused as busy.
BUSY_RETRY_AFTER_S = 0.5
#: submit() keeps each item's update subscription this long (at most this many) for a wait_work() to take over.
WATCH_TTL_S = 60.0
MAX_WATCHES = 10_000
#: A decision for a delegating run looks for the waiting child this many levels down, among this many children.
MAX_DECISION_DEPTH = 4
MAX_CHILDREN_SEARCHED = 256


@dataclass
class _Watch:
    """Work submitted here for a wait to take over: the next version the server pushes, caught by a one-message
    subscription (the server drops it after that message; no task, no queue), and the record as we last wrote it."""

    sub: Subscription
    pushed: asyncio.Future[Msg]
    latest: Versioned | None
    since: float

    async def disarm(self) -> None:
        if self.pushed.done() and not self.pushed.cancelled():
            return  # it had its one message: the server has dropped the subscription
        self.pushed.cancel()
        with contextlib.suppress(*NATS_FAILURES):
            await self.sub.unsubscribe()


class InvokeFailed(LatticeError):
    """A station ran the request and it failed: ``error`` is its answer."""

    def __init__(self, error: InvokeError) -> None:
        self.error = error
        super().__init__(f"{error.code}: {error.message} (station {error.station_id})")


class LatticeClient:
    """One org of a lattice, on one NATS connection. Its parts (state, station directory, auctioneer) are opened on
    first use and shared: a :class:`~.work.controller.WorkController` given :meth:`org_work` witnesses with the
    very auctioneer that places this client's work."""

    def __init__(self, nats: NatsSettings, org: str, *, create_state: bool = False,
                 limits: StateLimits | None = None, policy: WitnessPolicy | None = None,
                 auction: AuctionConfig | None = None, source: str = "cli") -> None:
        self.nats = nats
        self.org = org
        self._create_state = create_state
        self._limits = limits
        #: How placement and witnessing behave (backoffs, timeouts); the controller of this client follows it.
        self.policy = policy or WitnessPolicy()
        self.auction_config: AuctionConfig | None = auction
        #: The ``source`` of the events this client records (``/lattice/{org}/{source}``).
        self.source = source
        self.nc: NatsClient | None = None
        self._state: OrgState | None = None
        self._inflight: Counter[str] = Counter()
        self._store: WorkStore | None = None
        self._directory: StationDirectory | None = None
        self._auctioneer: Auctioneer | None = None
        #: Update subscriptions opened by submit() for wait_work() to take over (oldest first).
        self._watches: dict[str, _Watch] = {}
        #: Held while a lazily opened part (state, directory, auctioneer) is being opened.
        self._opening = asyncio.Lock()
        #: Called after the connection came back (a controller's work index rebuilds its watch).
        self._on_reconnect: list[Callable[[], None]] = []
        #: The connection is someone else's (a station's, see :meth:`attached`): close() leaves it open.
        self._borrowed = False

    @classmethod
    def attached(cls, nc: NatsClient, state: OrgState, *, source: str, policy: WitnessPolicy | None = None,
                 auction: AuctionConfig | None = None) -> LatticeClient:
        """A client on a connection and state another part of the process owns (a station delegating work for
        its agents): its directory and auctioneer open on first use, and closing it leaves the connection be.
        The owner calls :meth:`reconnected` after its connection comes back."""
        client = cls(NatsSettings(url=nc.connected_url.geturl() if nc.connected_url else ""), state.org,
                     limits=state.limits, policy=policy, auction=auction, source=source)
        client.nc, client._state, client._borrowed = nc, state, True
        return client

    async def reconnected(self) -> None:
        await self._reconnected()

    async def __aenter__(self) -> LatticeClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def connect(self) -> None:
        settings = self.nats
        try:
            self.nc = await connect(settings, on_reconnect=self._reconnected, on_disconnect=self._disconnected)
        except AccountLimitError as exc:  # there, but the org's account is full
            raise AccountLimitError(f"cannot connect to NATS at {settings.describe()}: {exc}") from exc
        except Exception as exc:  # nats-py raises OSError, its own errors and TimeoutError alike: all mean "not there"
            raise NoLatticeError(
                f"cannot connect to NATS at {settings.describe()}: {exc or type(exc).__name__}. "
                "Start a lattice with 'lattice up -f DIR', or pass --nats URL (env LATTICE_NATS_URL)."
            ) from exc

    async def _reconnected(self) -> None:
        if self._directory is not None:
            self._directory.rewatch()
        for hook in list(self._on_reconnect):
            hook()

    async def _disconnected(self) -> None:
        if self._directory is not None:
            self._directory.disconnected()

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` each time the connection comes back (a watch of one's own is rebuilt there)."""
        self._on_reconnect.append(hook)

    def connection(self) -> NatsClient:
        assert self.nc is not None, "connect() first"
        return self.nc

    async def close(self) -> None:
        watches, self._watches = list(self._watches.values()), {}
        if self._directory is not None:
            await self._directory.stop()
        if self._borrowed:
            for watch in watches:  # no drain ends them: the connection stays
                await watch.disarm()
            self.nc = None
            return
        if self.nc is not None:
            with contextlib.suppress(*NATS_FAILURES):
                await self.nc.drain()
            self.nc = None

    async def state(self) -> OrgState:
        if self._state is None:
            async with self._opening:  # concurrent first calls open it once
                if self._state is None:
                    assert self.nc is not None, "connect() first"
                    try:
                        self._state = await OrgState.open(self.nc, self.org, self._limits,
                                                          create=self._create_state)
                    except BucketNotFoundError as exc:
                        raise NoLatticeError(
                            f"org {self.org!r} has no lattice state on {self.nats.url} (no buckets): is a lattice "
                            "running for this org? Check --org (env LATTICE_ORG)."
                        ) from exc
        return self._state

    # --- registry ------------------------------------------------------------------------------------------

    async def stations(self) -> list[StationRecord]:
        state = await self.state()
        out = []
        for item in await state.list("stations"):
            try:
                out.append(decode(item.value, StationRecord))
            except DecodeError as exc:
                log.warning("skipping malformed station record %r: %s", item.key, exc)
        return sorted(out, key=lambda r: r.station_id)

    async def agents(self) -> list[AgentDefinition]:
        state = await self.state()
        out = []
        for item in await state.list("agents"):
            try:
                out.append(decode(item.value, AgentDefinition))
            except DecodeError as exc:
                log.warning("skipping malformed agent %r: %s", item.key, exc)
        return sorted(out, key=lambda a: a.name)

    async def put_agent(self, agent: Agent, *, org: str | None = None,
                        tool_servers: dict[str, McpServerSpec] | None = None) -> int:
        """Publish (create or update) an agent, with the ToolServers it names resolved into its definition:
        those given, else the org's stored ones (:meth:`put_tool_server`); stations that match load it live.
        Idempotent: the same definition again writes nothing."""
        if tool_servers is None and referenced_servers(agent):
            tool_servers = resolve_tool_servers(agent, await self.tool_servers())
        definition = AgentDefinition(org=org or agent.spec.org or self.org, name=agent.name,
                                     labels=agent.metadata.labels, spec=agent.spec,
                                     generation=agent.metadata.generation or 1, tool_servers=tool_servers or {})
        return await self._put_definition(definition, agent.spec.model.provider)

    async def _put_definition(self, definition: AgentDefinition, provider: str) -> int:
        state = await self.state()
        data = encode(definition)
        try:
            entry = await state.agents.get(definition.name)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value == data:
            return entry.revision or 0
        revision: int = await state.agents.put(definition.name, data)
        await (await self.work_store()).note("agent", "updated" if entry is not None and entry.value else "registered",
                                             subject=definition.name, revision=revision, provider=provider)
        return revision

    async def tool_servers(self) -> list[ToolServer]:
        """The org's stored ToolServers (embedded lattices; on Kubernetes they are resources)."""
        state = await self.state()
        await state.tool_servers()  # created on first use
        out = []
        for item in await state.list("toolservers"):
            try:
                out.append(ToolServer.model_validate_json(item.value))
            except ValidationError as exc:
                log.warning("skipping malformed ToolServer %r: %s", item.key, exc.errors(include_url=False)[:1])
        return sorted(out, key=lambda s: s.name)

    async def put_tool_server(self, server: ToolServer) -> list[str]:
        """Store a ToolServer and publish again every agent of the org that names it (its stations reconnect);
        returns those agents' names."""
        kv = await (await self.state()).tool_servers()
        await kv.put(server.name, server.model_dump_json(by_alias=True, exclude_none=True).encode())
        return await self._republish_users(server.name, server.spec)

    async def delete_tool_server(self, name: str) -> list[str]:
        """Forget a ToolServer; the agents that name it are published without it (their stations say so)."""
        kv = await (await self.state()).tool_servers()
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(name)
        return await self._republish_users(name, None)

    async def _republish_users(self, name: str, spec: McpServerSpec | None) -> list[str]:
        users = []
        for definition in await self.agents():
            if name not in [t.server for t in definition.spec.tools]:
                continue
            servers = dict(definition.tool_servers)
            if spec is None:
                servers.pop(name, None)
            else:
                servers[name] = McpServerSpec.model_validate(spec.model_dump(exclude={"org"}))
            await self._put_definition(definition.model_copy(update={"tool_servers": servers}),
                                       definition.spec.model.provider)
            users.append(definition.name)
        return users

    async def delete_agent(self, name: str) -> None:
        state = await self.state()
        await state.agents.delete(name)
        await (await self.work_store()).note("agent", "removed", subject=name)

    async def wait_for_stations(self, count: int, *, agent: str | None = None, timeout_s: float = 30.0) -> list[
            StationRecord]:
        """Wait until ``count`` live stations (hosting ``agent`` if given) are registered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            live = candidates(await self.stations(), agent=agent)
            if len(live) >= count:
                return live
            if loop.time() > deadline:
                what = f" hosting agent {agent!r}" if agent else ""
                raise NoStationError(f"only {len(live)} of {count} station(s){what} registered after {timeout_s}s")
            await asyncio.sleep(0.1)

    # --- synchronous invoke ---------------------------------------------------------------------------------

    async def invoke(self, input: Payload, *, agent: str | None = None, capability: str | None = None,
                     timeout_s: float = 120.0, context: dict[str, Any] | None = None,
                     station: str | None = None, records: list[StationRecord] | None = None,
                     budget: Budget | None = None, depth: int = 0) -> InvokeResult:
        """Run one agent synchronously on the least loaded station that hosts it; on ``busy``, ``draining``
        or a vanished station, try the next one. Raises :class:`LatticeError` with the last error."""
        if not agent and not capability:
            raise LatticeError("invoke needs an agent name or a capability")
        assert self.nc is not None
        request = InvokeRequest(request_id=uuid.uuid4().hex, agent=agent, capability=capability, input=input,
                                context=context or {}, timeout_s=timeout_s, budget=budget, depth=depth)
        if station:
            targets = [station]
        else:
            found = candidates(records if records is not None else await self.live_stations(), agent=agent,
                               capability=capability, extra_load=self._inflight)
            if not found and records is None:  # the watch may lag a station that has just joined: read
                found = candidates(await self.stations(), agent=agent, capability=capability,
                                   extra_load=self._inflight)
            targets = [r.station_id for r in found]
        if not targets:
            what = f"agent {agent!r}" if agent else f"capability {capability!r}"
            raise NoStationError(f"no live station in org {self.org!r} hosts {what}")
        with tracing.span("lattice.invoke", kind="client", attributes={
                "lattice.org": self.org, "lattice.agent": agent, "lattice.capability": capability}):
            return await self._invoke(request, targets, timeout_s)

    async def _invoke(self, request: InvokeRequest, targets: list[str], timeout_s: float) -> InvokeResult:
        assert self.nc is not None
        payload = encode(request)
        trace_headers = tracing.headers()
        last: str = ""
        busy = 0
        for target in targets:
            self._inflight[target] += 1
            try:
                msg = await self.nc.request(subjects.agent_invoke(self.org, target), payload,
                                            timeout=timeout_s + 5.0, headers=trace_headers)
            except NoRespondersError:
                last = f"station {target} is gone"
                continue
            except NatsTimeoutError:
                raise LatticeError(f"station {target} did not answer within {timeout_s + 5.0:.0f}s") from None
            finally:
                self._inflight[target] -= 1
            try:
                reply = decode_invoke_reply(msg.data)
            except DecodeError as exc:
                raise LatticeError(f"station {target} sent an invalid reply: {exc}") from exc
            if isinstance(reply, InvokeResult):
                return reply
            last = f"station {target}: {reply.code}: {reply.message}"
            if reply.code not in (ErrorCode.BUSY, ErrorCode.DRAINING, ErrorCode.NOT_FOUND):
                raise InvokeFailed(reply)
            busy += reply.code in (ErrorCode.BUSY, ErrorCode.DRAINING)
        if busy == len(targets):
            raise RetryLater(f"every station that hosts it is busy or draining ({last}); try again shortly",
                             retry_after_s=BUSY_RETRY_AFTER_S)
        raise LatticeError(f"no station could run the request; last error: {last}")

    # --- async work ------------------------------------------------------------------------------------------

    async def work_store(self) -> WorkStore:
        if self._store is None:
            state = await self.state()
            if self._store is None:  # no await between this check and the assignment: made once
                self._store = WorkStore(state, EventPublisher(self.connection(), self.org, self.source))
        return self._store

    async def directory(self) -> StationDirectory:
        """The registry followed live by one KV watch for the life of this client, started on first use: a
        client that invokes or submits often reads no bucket per call."""
        if self._directory is None:
            state = await self.state()
            async with self._opening:
                if self._directory is None:
                    directory = StationDirectory(state)
                    await directory.start()
                    self._directory = directory
        return self._directory

    async def live_stations(self) -> list[StationRecord]:
        return list((await self.directory()).records.values())

    async def auctioneer(self) -> Auctioneer:
        """An auctioneer following the registry live (one watch for the life of this client)."""
        if self._auctioneer is None:
            store, directory = await self.work_store(), await self.directory()
            async with self._opening:
                # Once: concurrent first submissions must share one auctioneer, or each would rank stations
                # without counting the others' work (and leak its own directory watch).
                if self._auctioneer is None:
                    auctioneer = Auctioneer(self.connection(), store, directory=directory, config=self.auction_config,
                                            policy=self.policy)
                    await auctioneer.start()
                    self._auctioneer = auctioneer
        return self._auctioneer

    async def org_work(self) -> OrgWork:
        """This client's work machinery (store, directory, auctioneer, policy), for a controller to share."""
        auctioneer = await self.auctioneer()
        assert self._store is not None and self._directory is not None
        return OrgWork(self.connection(), self._store, self._directory, auctioneer, self.policy, self._on_reconnect)

    async def submit(self, spec: WorkItemSpec, *, work_id: str | None = None, watch: bool = False,
                     parent_id: str | None = None, depth: int = 0) -> WorkRecord:
        """Create the work and auction it at once; idempotent on ``work_id``. Returns the record as it stands
        after the auction (Assigned, Unschedulable, ...). The witness of a running controller takes over if this
        process dies before the work is placed.

        ``watch``: the caller will ``wait_work`` for it. Its updates are then followed from the moment the record
        exists (kept up to a minute for that wait), so the wait reads nothing; without a wait they would only
        cost traffic, hence off by default."""
        if spec.org is not None and spec.org != self.org:
            raise LatticeError(f"work is for org {spec.org!r} but this client is connected to org {self.org!r}")
        auctioneer = await self.auctioneer()
        work_id = work_id or uuid.uuid4().hex

        return await self._create(work_id, watch, lambda on_created: auctioneer.submit(
            spec, work_id=work_id, parent_id=parent_id, depth=depth, on_created=on_created))

    async def hand_over(self, spec: WorkItemSpec, *, work_id: str, parent_id: str | None = None, depth: int = 0,
                        watch: bool = False) -> WorkRecord:
        """Create work for the org's controller to place: a Pending record due now, which its witness (watching
        the work bucket) auctions at once. What a station does when one of its agents delegates: it writes the
        record and never sends an auction or an assignment itself, so its permissions need neither. Idempotent
        on ``work_id`` like :meth:`submit`."""
        now = utcnow()
        record = WorkRecord(org=self.org, work_id=work_id, spec=spec, phase=WorkPhase.PENDING, parent_id=parent_id,
                            depth=depth, created_at=now, updated_at=now, retry_at=now,
                            reason="handed to the controller to place",
                            traceparent=tracing.new_traceparent())

        store = await self.work_store()
        return await self._create(work_id, watch, lambda on_created: store.submit(record, on_created))

    async def _create(self, work_id: str, watch: bool,
                      create: Callable[[Callable[[Versioned], Awaitable[None]] | None],
                                       Awaitable[tuple[Versioned, bool]]]) -> WorkRecord:
        """Create work through ``create`` and, with ``watch``, follow its record for a wait_work() to come."""
        async def follow(created: Versioned) -> None:
            # Subscribed once the record exists (so its creation is not pushed to us) and before a station can
            # have it: a wait_work() that follows needs no read. The SUB leaves with the assignment's write.
            (await self._watch(work_id)).latest = created

        try:
            versioned, _ = await create(follow if watch else None)
        except BaseException:  # whatever ended the create (a cancellation too): close the watch opened for it
            if (opened := self._watches.pop(work_id, None)) is not None:
                await opened.disarm()
            raise
        if (opened := self._watches.get(work_id)) is not None:
            opened.latest = versioned
        return versioned.record

    async def _watch(self, work_id: str) -> _Watch:
        now = time.monotonic()
        if (same := self._watches.pop(work_id, None)) is not None:  # submitted again with the same id
            await same.disarm()
        # Oldest first: only the front can have expired, and the map stays bounded.
        while self._watches:
            key, oldest = next(iter(self._watches.items()))
            if now - oldest.since <= WATCH_TTL_S and len(self._watches) < MAX_WATCHES:
                break
            del self._watches[key]
            await oldest.disarm()
        # One message, then the server drops the interest (UNSUB with a limit, sent with the SUB): for work that
        # finishes without a Running write, that message is the outcome, and nothing is left to unsubscribe.
        pushed: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        sub = await self.connection().subscribe(subjects.work_update(self.org, work_id, "record"), future=pushed,
                                         max_msgs=1)
        await sub.unsubscribe(limit=1)
        watch = self._watches[work_id] = _Watch(sub, pushed, None, now)
        return watch

    async def get_work(self, work_id: str) -> WorkRecord | None:
        try:
            found = await (await self.work_store()).get(work_id)
        except DecodeError as exc:
            raise LatticeError(_unreadable(work_id, exc)) from exc
        return found.record if found else None

    async def list_work(self) -> list[WorkRecord]:
        return sorted((v.record for v in await (await self.work_store()).all()), key=lambda r: r.created_at)

    async def result(self, record: WorkRecord) -> Payload:
        return await (await self.work_store()).load_result(record)

    async def journal(self, work_id: str) -> list[JournalEntry]:
        """The journal of an agent run (every attempt's turns and tool calls, in order; empty: none kept)."""
        entries, _, _ = await JournalStore(await self.state()).read(work_id)
        return entries

    async def decide(self, work_id: str, *, approved: bool, reply: str | None = None, reason: str = "",
                     by: str = "") -> WorkRecord:
        """A person's decision on what a run waits for: approve or reject the call it waits to make, or
        (``reply``) answer its question. The work goes back to be placed, and resumes where it stopped. Work
        that does not wait itself but delegated to one child that does gets the decision passed to that child
        (a decision reaches the children of a delegating run); with several waiting, it says which they are."""
        store = await self.work_store()
        target = await self._waiting_one(work_id)

        def apply(r: WorkRecord) -> WorkRecord:
            return waiting.decide(r, approved=approved, reply=reply, reason=reason, by=by)

        result = await store.mutate(target, apply)
        if result is None:
            raise LatticeError(f"no work {target!r} in org {self.org!r}")
        record = result.record
        decided = record.decisions.get(next(reversed(record.decisions)), None) if record.decisions else None
        await store.emit("work", "input_received" if reply is not None else "approval_decided", record,
                         approved=approved, by=by, why=reason, decision=decided.model_dump(mode="json")
                         if decided else None)
        return record

    async def _waiting_one(self, work_id: str, depth: int = 0) -> str:
        """``work_id`` if it waits for a person, else the one descendant that does (4 levels deep at most)."""
        current = await self.get_work(work_id)
        if current is None:
            raise LatticeError(f"no work {work_id!r} in org {self.org!r}")
        if current.phase.awaiting or depth >= MAX_DECISION_DEPTH or current.phase.terminal:
            return work_id
        # A running parent records its children when it finishes; its journal has them as they are made.
        children = list(dict.fromkeys([*current.children, *(e.child for e in await self.journal(work_id)
                                                            if e.child)]))
        found: list[str] = []
        for child in children[:MAX_CHILDREN_SEARCHED]:
            with contextlib.suppress(LatticeError):
                one = await self._waiting_one(child, depth + 1)
                record = await self.get_work(one)
                if record is not None and record.phase.awaiting:
                    found.append(one)
        if len(found) > 1:
            raise LatticeError(f"work {work_id} has {len(found)} children waiting for a person: "
                               f"{', '.join(found)}; decide for one of them by its id")
        return found[0] if found else work_id

    async def cancel_work(self, work_id: str, reason: str = "cancelled by user") -> WorkRecord:
        """Cancel queued work at once; ask the station running it to stop (the witness forces it if the
        station does not confirm). Cancelling finished work is a no-op that returns the record."""
        store = await self.work_store()

        def cancel(r: WorkRecord) -> WorkRecord | None:
            if r.phase.terminal or r.cancel_requested:
                return None
            if r.phase in (WorkPhase.ASSIGNED, WorkPhase.RUNNING) or r.is_workflow:
                return r.model_copy(update={"cancel_requested": True, "reason": reason, "updated_at": utcnow()})
            return phases.transition(r, WorkPhase.CANCELLED, reason=reason)

        result = await store.mutate(work_id, cancel)
        if result is None:
            current = await store.get(work_id)
            if current is None:
                raise LatticeError(f"no work {work_id!r} in org {self.org!r}")
            return current.record
        record = result.record
        if record.phase == WorkPhase.CANCELLED:
            await store.emit("work", "cancelled", record)
        else:
            await store.emit("work", "cancel_requested", record)
        if record.phase != WorkPhase.CANCELLED and record.station_id:
            await self.connection().publish(subjects.work_cancel(self.org, record.station_id),
                                     encode(WorkCancel(work_id=work_id, attempt_id=record.attempt_id,
                                                       reason=reason)))
        if record.is_workflow:
            from .work.workflow import child_id, ready

            for index in ready(record):  # the steps that can be running: their dependencies succeeded
                with contextlib.suppress(LatticeError):
                    await self.cancel_work(child_id(work_id, index), reason)
        return record

    async def wait_work(self, work_id: str, *, timeout_s: float | None = None,
                        on_progress: Callable[[WorkProgress | WorkRecord], Awaitable[None]] | None = None,
                        poll_s: float = 2.0) -> WorkRecord:
        """Wait until the work is finished. The server pushes every stored version of the record
        (``work.{id}.record``), so the outcome needs no read of its own: a pushed record is stored, and the KV is
        the source of truth (its events follow asynchronously). The record is re-read every ``poll_s`` as well, so
        a missed message (NATS restarted) costs a delay, never a hang."""
        store = await self.work_store()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        latest: Versioned | None = None
        if (watch := self._watches.pop(work_id, None)) is not None:
            # Submitted here: the first version pushed since the record was created is caught already, and
            # for work that does not record Running it is the outcome.
            latest = watch.latest
            if on_progress is None and latest is not None:
                try:
                    async with asyncio.timeout(poll_s if deadline is None else min(poll_s, deadline - loop.time())):
                        msg = await watch.pushed
                    if (pushed := store.pushed(msg.headers, msg.data)) is not None:
                        latest = _newer(latest, pushed)
                except TimeoutError:
                    pass
                if latest.record.phase.terminal:
                    self._finished(work_id)
                    return latest.record
            await watch.disarm()
        # Follow every version from now on; what was pushed before is read once.
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await self.connection().subscribe(subjects.work_updates_all(self.org, work_id), cb=queue.put)
        reported: WorkRecord | None = None
        read = True
        unreadable: DecodeError | None = None
        try:
            while True:
                if read:
                    read = False
                    try:
                        found = await retry_transient(lambda: store.get(work_id), what=f"reading work {work_id}")
                    except DecodeError as exc:  # a controller quarantines it: a readable Failed record follows
                        unreadable = exc
                    else:
                        if found is None:
                            raise LatticeError(f"no work {work_id!r} in org {self.org!r}")
                        latest = _newer(latest, found)
                if latest is None:
                    if deadline is not None and loop.time() >= deadline:
                        raise LatticeError(_unreadable(work_id, unreadable))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(poll_s):
                            await queue.get()
                    read = True
                    continue
                record = latest.record
                if on_progress is not None and (reported is None or record.updated_at != reported.updated_at):
                    await on_progress(record)
                reported = record
                if record.phase.terminal:
                    self._finished(work_id)
                    return record
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    why = f" ({record.reason})" if record.reason else ""
                    raise LatticeError(f"work {work_id} still {record.phase} after {timeout_s}s{why}")
                try:
                    async with asyncio.timeout(min(poll_s, remaining or poll_s)):  # no task per wait
                        msg = await queue.get()
                except TimeoutError:
                    read = True
                    continue
                kind = parsed[1] if (parsed := subjects.parse_work_update(msg.subject)) else None
                if kind == "record":
                    if _revision(msg) <= latest.revision:
                        continue  # a version we know (or older): no need to decode it
                    pushed = store.pushed(msg.headers, msg.data)
                    if pushed is not None:
                        latest = pushed
                    read = pushed is None
                elif kind == "progress" and on_progress is not None:
                    with contextlib.suppress(DecodeError):
                        await on_progress(decode(msg.data, WorkProgress))
        finally:
            with contextlib.suppress(*NATS_FAILURES):
                await sub.unsubscribe()

    def _finished(self, work_id: str) -> None:
        if self._auctioneer is not None:
            self._auctioneer.finished(work_id)

    async def events(self, *, follow: bool = False, category: str | None = None,
                     work_id: str | None = None, recent: int | None = None) -> AsyncIterator[CloudEvent]:
        """The org's CloudEvents, oldest first (``recent``: from the last that many); ``follow`` keeps waiting for
        new ones."""
        await self.state()
        subject = subjects.events_all(self.org) if category is None else \
            f"{subjects.org_root(self.org)}.events.{category}.*"
        async for event in read_events(self.connection(), self.org, follow=follow, subject_filter=subject,
                                       recent=recent):
            if work_id is None or event.subject == work_id:
                yield event


def _unreadable(work_id: str, exc: DecodeError | None) -> str:
    return (f"work {work_id}: its stored record cannot be read ({exc}); a running controller (`lattice up`, "
            "`lattice controller run`, the operator) replaces it by a Failed record that says why")


def _revision(msg: Msg) -> int:
    try:
        return int((msg.headers or {}).get("Nats-Sequence", "0"))
    except ValueError:
        return 0


def _newer(current: Versioned | None, read: Versioned) -> Versioned:
    """The record just read, unless we know a later one. At the same revision the stored one wins: submit()'s
    copy may be an assignment its winner has not claimed yet."""
    return read if current is None or read.revision >= current.revision else current

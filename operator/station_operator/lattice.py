"""The operator's view of the lattice: per org one runtime, an admin client (one NATS connection, one registry
watch, one auctioneer), the work controller's witness on that client's parts, and a mirror that copies work
records into WorkItem status as they change. Created lazily on the first resource of an org and kept in kopf's
``memo``; everything they hold can be rebuilt from Kubernetes and KV after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Protocol

from station_runtime.api.models import WorkItem
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import StationRecord, WorkRecord
from station_runtime.natsauth import AccountLimits, prepare_org_state
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.state import StateLimits
from station_runtime.work.controller import WorkController
from station_runtime.work.index import WorkIndex
from station_runtime.work.policy import WitnessPolicy
from station_runtime.work.store import Versioned

from . import builders, kube
from .config import OperatorSettings

log = logging.getLogger(__name__)


class Auth(Protocol):
    """How the operator authenticates to NATS per org and what creds it hands to stations."""

    async def admin_settings(self, org: str) -> NatsSettings: ...

    async def station_creds(self, org: str, station_ids: list[str],
                            existing: dict[str, str] | None = None) -> dict[str, str] | None: ...

    async def limit(self, org: str, limits: AccountLimits) -> None:
        """Make the org's NATS account carry ``limits`` (idempotent; a change is pushed at once)."""

    async def close(self) -> None: ...


class NoAuth:
    """Development and tests: one NATS without accounts; isolation by subject and bucket names only."""

    def __init__(self, base: NatsSettings) -> None:
        self.base = base
        self._warned: set[str] = set()

    async def admin_settings(self, org: str) -> NatsSettings:
        return self.base

    async def station_creds(self, org: str, station_ids: list[str],
                            existing: dict[str, str] | None = None) -> dict[str, str] | None:
        return None

    async def limit(self, org: str, limits: AccountLimits) -> None:
        if limits != AccountLimits() and org not in self._warned:
            self._warned.add(org)
            log.warning("org %s: its namespace sets NATS account limits, but without JWT auth (auth.mode: none) "
                        "there is no account to hold them: install with auth.mode jwt", org)

    async def close(self) -> None:
        return None


@dataclass
class Tracked:
    namespace: str
    name: str
    work_item: WorkItem
    last_status: dict[str, object] | None = None


class WorkItemMirror:
    """Patches the status of the WorkItems it tracks as their records change, coalescing bursts. It reads the
    org's work index (the controller's one watch of the work bucket), not a watch of its own."""

    def __init__(self, org: str, index: WorkIndex) -> None:
        self.org = org
        self.index = index
        self.tracked: dict[str, Tracked] = {}
        self._pending: dict[str, WorkRecord] = {}
        self._wake = asyncio.Event()
        #: A finished record skips the rate limit: users wait for exactly that one.
        self._urgent = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.patches = 0

    def start(self) -> None:
        self.index.listeners.append(self._on_version)
        self.index.wanted = self.tracked.__contains__  # finished records are decoded for tracked WorkItems only
        self._tasks = [asyncio.create_task(self._flush(), name=f"mirror-flush-{self.org}")]

    async def stop(self) -> None:
        self._stopping = True  # wait_for may swallow a cancel (Python 3.11): the flush loop checks this too
        if self._on_version in self.index.listeners:
            self.index.listeners.remove(self._on_version)
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def track(self, work_id: str, namespace: str, name: str, work_item: WorkItem) -> None:
        self.tracked[work_id] = Tracked(namespace, name, work_item)

    def untrack(self, work_id: str) -> None:
        self.tracked.pop(work_id, None)
        self._pending.pop(work_id, None)

    def offer(self, record: WorkRecord) -> None:
        if record.work_id in self.tracked:
            self._pending[record.work_id] = record
            self._wake.set()
            if record.phase.terminal:
                self._urgent.set()

    def _on_version(self, versioned: Versioned) -> None:
        self.offer(versioned.record)

    async def _flush(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            self._urgent.clear()
            await asyncio.gather(*(self._patch(r) for r in batch.values()), return_exceptions=True)
            # Bounded rate: bursts of progress within 0.1 s collapse into one patch, unless something finished.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), 0.1)

    async def _patch(self, record: WorkRecord) -> None:
        tracked = self.tracked.get(record.work_id)
        if tracked is None:
            return
        status = builders.work_item_status(tracked.work_item, self.org, record)
        if status == tracked.last_status:
            return
        try:
            if await kube.patch_status("workitems", tracked.namespace, tracked.name, status):
                tracked.last_status = status
                self.patches += 1
            else:
                self.untrack(record.work_id)
        except Exception as exc:  # the API server away or refusing: the next change or the resync patches again
            log.warning("could not patch WorkItem %s/%s: %s", tracked.namespace, tracked.name, exc)


@dataclass
class OrgRuntime:
    org: str
    client: LatticeClient
    controller: WorkController
    mirror: WorkItemMirror

    def records(self) -> list[StationRecord]:
        return list(self.controller.work.directory.records.values())


class Lattice:
    """Lives in kopf's memo: the operator settings and one OrgRuntime per org."""

    def __init__(self, settings: OperatorSettings, auth: Auth) -> None:
        self.settings = settings
        self.auth = auth
        self.orgs: dict[str, OrgRuntime] = {}
        #: When each Station's creds were last looked at (namespace, name) -> monotonic time: they are renewed
        #: by the resync timer when they near their end.
        self.creds_checked: dict[tuple[str, str], float] = {}
        self._lock = asyncio.Lock()

    async def org(self, org: str) -> OrgRuntime:
        async with self._lock:
            runtime = self.orgs.get(org)
            if runtime is not None:
                return runtime
            # One connection per org, named for it (an operator's connections read at a glance in `nats server
            # report connections` or /connz).
            nats_settings = dataclasses.replace(await self.auth.admin_settings(org), name=f"lattice-operator-{org}")
            limits = StateLimits(presence_ttl_s=self.settings.station_heartbeat_s * 3,
                                 replicas=self.settings.state_replicas)
            client = LatticeClient(nats_settings, org, create_state=True, limits=limits, policy=WitnessPolicy(),
                                   source="operator")
            await client.connect()
            await client.state()
            # The admin creates every stream the org's stations use (station users may not create streams).
            await prepare_org_state(client.connection(), org, limits)
            # The witness works on the client's own connection, directory and auctioneer: one runtime per org.
            controller = WorkController(await client.org_work(), interval_s=self.settings.witness_interval_s)
            await controller.start()
            mirror = WorkItemMirror(org, controller.index)
            mirror.start()
            runtime = OrgRuntime(org, client, controller, mirror)
            self.orgs[org] = runtime
            log.info("org %s: lattice state ready, work controller started", org)
            return runtime

    async def close(self) -> None:
        for runtime in self.orgs.values():
            await runtime.mirror.stop()
            await runtime.controller.stop()
            await runtime.client.close()
        self.orgs.clear()
        await self.auth.close()

"""The work controller: a live station directory, an auctioneer and a witness on one NATS connection.

``lattice up`` runs one; ``lattice controller run`` runs one on its own (and several may run at once); the
Kubernetes operator runs one per org. It holds no state of its own: everything is in KV, so a restarted
controller simply carries on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from types import TracebackType

from nats.aio.client import Client as NatsClient

from ..natsio.connect import NatsSettings, connect
from ..natsio.events import EventPublisher
from ..natsio.state import OrgState, StateLimits
from .auction import AuctionConfig, Auctioneer
from .directory import StationDirectory
from .policy import WitnessPolicy
from .store import WorkStore
from .witness import Witness

log = logging.getLogger(__name__)


class WorkController:
    def __init__(self, nats: NatsSettings, org: str, *, policy: WitnessPolicy | None = None,
                 auction: AuctionConfig | None = None, interval_s: float = 1.0,
                 limits: StateLimits | None = None, name: str = "controller") -> None:
        self.nats = dataclasses.replace(nats, name=f"lattice-{name}-{org}")
        self.org = org
        self.policy = policy or WitnessPolicy()
        self.auction_config = auction or AuctionConfig()
        self.interval_s = interval_s
        self.limits = limits
        self.name = name
        self.nc: NatsClient | None = None
        self.directory: StationDirectory | None = None
        self.auctioneer: Auctioneer | None = None
        self.witness: Witness | None = None
        self.store: WorkStore | None = None

    async def start(self) -> None:
        self.nc = await connect(self.nats, on_reconnect=self._reconnected, on_disconnect=self._disconnected)
        state = await OrgState.open(self.nc, self.org, self.limits)
        self.store = WorkStore(state, EventPublisher(self.nc, self.org, self.name))
        self.directory = StationDirectory(state.stations, on_join=self._joined)
        await self.directory.start()
        self.auctioneer = Auctioneer(self.nc, self.store, directory=self.directory, config=self.auction_config,
                                     policy=self.policy)
        await self.auctioneer.start()
        self.witness = Witness(self.nc, self.store, self.auctioneer, self.directory, policy=self.policy,
                               interval_s=self.interval_s)
        self.witness.start()
        log.info("work controller for org %s started", self.org)

    async def _joined(self, record: object) -> None:
        if self.witness is not None:
            self.witness.wake()

    async def _reconnected(self) -> None:
        if self.directory is not None:
            self.directory.rewatch()

    async def _disconnected(self) -> None:
        if self.directory is not None:
            self.directory.disconnected()

    async def stop(self) -> None:
        if self.witness is not None:
            await self.witness.stop()
        if self.directory is not None:
            await self.directory.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    async def __aenter__(self) -> WorkController:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

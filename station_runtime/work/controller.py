"""The work controller: the witness of an org, on the org's one runtime.

``lattice up`` runs one; ``lattice controller run`` runs one on its own (and several may run at once); the
Kubernetes operator runs one per org. It opens nothing of its own: it is given the :class:`OrgWork` of a client
(``await LatticeClient.org_work()``), that client's connection, store, station directory and auctioneer, so that
the work the client places and the work the witness reschedules are ranked by one auctioneer (one count of work in
flight per station), and the process holds one connection and one registry watch per org. It holds no state of
its own either: everything is in KV, so a restarted controller simply carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from nats.aio.client import Client as NatsClient

from ..contract.messages import StationRecord, utcnow
from ..telemetry import metrics
from .auction import Auctioneer
from .directory import StationDirectory
from .index import WorkIndex
from .policy import WitnessPolicy
from .store import WorkStore
from .witness import Witness

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrgWork:
    """One org's work machinery on one connection: its store, live station directory and auctioneer, and the
    policy they follow. A :class:`~station_runtime.client.LatticeClient` opens it once and shares it."""

    nc: NatsClient
    store: WorkStore
    directory: StationDirectory
    auctioneer: Auctioneer
    policy: WitnessPolicy
    #: Called after the connection came back (the client calls them): watches are rebuilt.
    on_reconnect: list[Callable[[], None]]


class WorkController:
    """The witness of one org, with the index of its work (one watch of the work bucket) that the witness and
    anyone else in the process (the operator's WorkItem mirror) read."""

    def __init__(self, work: OrgWork, *, interval_s: float = 1.0) -> None:
        self.work = work
        self.org = work.store.state.org
        self.interval_s = interval_s
        self.index = WorkIndex(work.store.state, work.policy)
        self.witness: Witness | None = None
        self._unobserve: list[Callable[[], None]] = []

    async def start(self) -> None:
        w = self.work
        # The witness first: it handles what the index cannot read, from the index's first snapshot on.
        self.witness = Witness(w.nc, w.store, w.auctioneer, w.directory, self.index, policy=w.policy,
                               interval_s=self.interval_s)
        await self.index.start()
        w.on_reconnect.append(self.index.rewatch)
        w.directory.on_join.append(self._joined)
        self.witness.start()
        self._unobserve = [
            metrics.WORK_ITEMS.add(self.index.depth), metrics.WAITING_AGE.add(self.index.waiting_age),
            metrics.HEARTBEAT_AGE.add(self._heartbeats),
            metrics.STATION_LOAD.add(lambda: [(r.load, {"org": self.org, "station": r.station_id})
                                              for r in self._stations()]),
            metrics.STATION_CAPACITY.add(lambda: [(r.capacity, {"org": self.org, "station": r.station_id})
                                                  for r in self._stations()])]
        log.info("work controller for org %s started (%d unfinished, %d finished records)", self.org,
                 len(self.index.live), self.index.finished)

    def _stations(self) -> list[StationRecord]:
        return list(self.work.directory.records.values())

    def _heartbeats(self) -> list[tuple[float, dict[str, str]]]:
        """Seconds since each registered station's last heartbeat (a metrics scrape reads it, off the loop)."""
        now = utcnow()
        return [(max(r.age_s(now), 0.0), {"org": self.org, "station": r.station_id, "status": r.status.value.lower()})
                for r in self._stations()]

    async def _joined(self, _: object) -> None:
        if self.witness is not None:
            self.witness.wake()

    async def stop(self) -> None:
        """Stop the witness and the index; the connection and the parts stay with their owner (the client)."""
        if self.witness is None:
            return
        for unobserve in self._unobserve:
            unobserve()
        await self.witness.stop()
        self.witness = None
        await self.index.stop()
        for hooks, hook in ((self.work.directory.on_join, self._joined), (self.work.on_reconnect, self.index.rewatch)):
            if hook in hooks:
                hooks.remove(hook)  # type: ignore[arg-type]

    async def __aenter__(self) -> WorkController:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

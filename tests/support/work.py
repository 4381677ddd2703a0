"""Work fixtures' building blocks: a fast controller, and reading a work item's events."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from station_runtime.client import LatticeClient
from station_runtime.natsio.connect import NatsSettings
from station_runtime.work.auction import AuctionConfig
from station_runtime.work.controller import WorkController
from station_runtime.work.policy import WitnessPolicy
from tests.support.limits import TEST_LIMITS
from tests.support.waiting import eventually

#: Tight timings for tests: stations beat every 0.5 s, the witness sweeps every 0.2 s.
FAST = WitnessPolicy(accept_timeout_s=2.0, stuck_threshold_s=30.0, pending_grace_s=0.5, scheduling_timeout_s=2.0,
                     cancel_grace_s=2.0, unschedulable_base_s=0.2, unschedulable_max_s=1.0)


@asynccontextmanager
async def controller(url: str, org: str, name: str = "controller", *, policy: WitnessPolicy = FAST,
                     interval_s: float = 0.2) -> AsyncIterator[WorkController]:
    """A controller as `lattice controller run` runs one: its own client (connection, directory, auctioneer) and
    a witness on it."""
    async with LatticeClient(NatsSettings(url=url, name=f"lattice-{name}-{org}"), org, create_state=True,
                             limits=TEST_LIMITS, policy=policy, source=name,
                             auction=AuctionConfig(deadline_s=1.0, assign_timeout_s=1.0)) as client, \
            WorkController(await client.org_work(), interval_s=interval_s) as c:
        yield c


#: The events that end an item's history.
FINAL_EVENTS = frozenset({"work.succeeded", "work.failed", "work.escalated", "work.cancelled"})


def has_final_event(types: list[str]) -> bool:
    return bool(FINAL_EVENTS & set(types))


async def event_types(client: LatticeClient, work_id: str, *, until: Callable[[list[str]], bool] = has_final_event,
                      timeout_s: float = 5.0) -> list[str]:
    """The item's event types, oldest first, once ``until`` holds (by default: its final event is in). Events are
    published after the change they describe is stored, without waiting: a finished record can precede its last
    event by a moment."""

    async def read() -> list[str] | None:
        types = [e.short_type async for e in client.events(work_id=work_id)]
        return types if until(types) else None

    return await eventually(read, timeout_s=timeout_s, what=f"the events of {work_id}")


async def event_counts(client: LatticeClient, *, until: Callable[[Counter[tuple[str, str | None]]], bool],
                       timeout_s: float = 10.0) -> Counter[tuple[str, str | None]]:
    """How many events of each (type, work id) the org has, once ``until`` holds."""

    async def read() -> Counter[tuple[str, str | None]] | None:
        counts = Counter([(e.short_type, e.subject) async for e in client.events(category="work")])
        return counts if until(counts) else None

    return await eventually(read, timeout_s=timeout_s, what="the org's work events")

"""Delegation for lattice tools: a station creates and awaits child work on its own connection.

A station writes a child's record, Pending and due now, and the org's controller places it: its witness follows the
work bucket and auctions the child at once (no sweep to wait for). The station never auctions or assigns work
itself, so a station's permissions let it send nothing to another station (an assignment or an invoke in another
station's name is refused by the server). ``lattice_invoke`` is the same child work, awaited at once: recorded,
placed like any work, and resumable. A child records its parent and depth, runs with what is left of the parent's
deadline (less a margin for the parent to use the answer) and budget, and is created under an id derived from the
parent and the model's call: the same call submitted again finds the same child.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NatsClient

from ..client import LatticeClient
from ..contract.messages import WorkPhase
from ..contract.specs import WorkItemSpec, WorkTimeouts
from ..errors import ConflictError, LatticeError
from ..executors.tools.lattice import ChildOutcome, ChildRequest
from ..natsio.state import OrgState

log = logging.getLogger(__name__)

#: What a parent keeps of its remaining time to use a child's answer.
DEADLINE_MARGIN_S = 2.0
MIN_CHILD_S = 1.0
#: Children of a run with no deadline get the work default.
DEFAULT_CHILD_S = 600.0


def child_timeout(deadline_s: float | None) -> float:
    """Pure: the child's startToClose from what is left of the parent's deadline."""
    if deadline_s is None:
        return DEFAULT_CHILD_S
    return max(deadline_s - DEADLINE_MARGIN_S, MIN_CHILD_S)


def child_spec(request: ChildRequest, retries: int) -> WorkItemSpec:
    """Pure: the work item a lattice_submit creates."""
    return WorkItemSpec(agent=request.agent, required_capabilities=[request.capability] if request.capability else [],
                        input=request.input if isinstance(request.input, (str, dict)) else str(request.input),
                        timeouts=WorkTimeouts(start_to_close_seconds=child_timeout(request.deadline_s)),
                        max_retries=retries, budget=request.budget)


class Delegation:
    """The station's delegation service: one lazily opened client for all its runs."""

    def __init__(self, nc: NatsClient, state: OrgState, station_id: str) -> None:
        self._nc = nc
        self._state = state
        self._source = f"station/{station_id}"
        self._client: LatticeClient | None = None
        self._opening = asyncio.Lock()

    async def client(self) -> LatticeClient:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = LatticeClient.attached(self._nc, self._state, source=self._source)
        return self._client

    async def reconnected(self) -> None:
        if self._client is not None:
            await self._client.reconnected()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def for_run(self, retries: int) -> RunDelegate:
        return RunDelegate(self, retries)


class RunDelegate:
    """:class:`~..executors.tools.lattice.Delegate` for one run."""

    def __init__(self, service: Delegation, retries: int) -> None:
        self._service = service
        self._retries = retries

    async def submit(self, request: ChildRequest) -> str:
        client = await self._service.client()
        try:
            record = await client.hand_over(child_spec(request, self._retries), work_id=request.work_id, watch=True,
                                            parent_id=request.parent_id, depth=request.depth)
        except ConflictError:
            # The same call submitted again (a resumed run) with what is left now: the first child stands.
            return request.work_id
        return record.work_id

    async def wait(self, work_id: str, timeout_s: float | None) -> ChildOutcome:
        client = await self._service.client()
        try:
            record = await client.wait_work(work_id, timeout_s=timeout_s)
        except LatticeError as exc:
            current = await client.get_work(work_id)
            phase = current.phase.value if current else "Unknown"
            return ChildOutcome(work_id, phase, error=str(exc))
        if record.phase == WorkPhase.SUCCEEDED:
            return ChildOutcome(work_id, record.phase.value, result=await client.result(record),
                                usage=record.usage)
        why = record.error.message if record.error else (record.reason or record.phase.value)
        return ChildOutcome(work_id, record.phase.value, error=why, usage=record.usage)

    async def invoke(self, request: ChildRequest) -> ChildOutcome:
        """Run the agent now and wait for its answer: child work like a submit (recorded, placed by the
        controller, resumable), awaited at once."""
        work_id = await self.submit(request)
        return await self.wait(work_id, child_timeout(request.deadline_s))

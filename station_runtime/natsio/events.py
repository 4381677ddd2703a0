"""Publishing CloudEvents into the org's events stream.

Events are the audit log, not the source of truth (that is KV), so a failed publish is logged and counted but
never fails the state change that caused it. Events are published after the change they describe is stored, and
asynchronously: a reader may see a record change a moment before its event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from ..contract import subjects
from ..contract.events import Category, CloudEvent, make_event
from ..telemetry import metrics
from .retry import NATS_FAILURES

log = logging.getLogger(__name__)


class EventPublisher:
    """Publishes events without waiting for the stream: an event costs the hot path a buffered write, not a round
    trip. Most events are sent without asking for an acknowledgement at all (on this kind of machine every
    message costs a socket write and a wake-up, four per work item); one event per ``ack_every_s`` asks for one
    and checks it in the background, so a stream that is missing, full or refusing is still noticed, logged and
    counted within a second. One publisher's events keep their order (one connection). No headers: nothing is ever
    re-sent (so no ``Nats-Msg-Id`` to de-duplicate), and the trace context travels in the event itself (the
    CloudEvents ``traceparent`` extension); a plain message costs the publisher and the server less."""

    def __init__(self, nc: NatsClient, org: str, source: str, *, ack_timeout_s: float = 5.0,
                 ack_every_s: float = 1.0) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.org = org
        self.source = source
        self.ack_timeout_s = ack_timeout_s
        self.ack_every_s = ack_every_s
        self._next_ack = 0.0
        self.failures = 0

    async def emit(self, category: Category, type_: str, *, subject: str | None = None,
                   data: dict[str, Any] | None = None, traceparent: str | None = None) -> CloudEvent:
        event = make_event(category, type_, org=self.org, source=self.source, subject=subject, data=data,
                           traceparent=traceparent)
        what = f"{category}.{type_} for {subject}"
        payload = event.model_dump_json(exclude_none=True).encode()
        target = subjects.event(self.org, category, type_)
        now = time.monotonic()
        try:
            if now < self._next_ack:
                await self._nc.publish(target, payload)
                return event
            self._next_ack = now + self.ack_every_s
            # No wait_stall: with one, Python 3.11's wait_for yields to the loop even when a slot is free, and a
            # message published after this call could leave before the event. Slots free up within ack_timeout_s.
            ack = await self._js.publish_async(target, payload)
        except NATS_FAILURES as exc:
            self._failed(what, exc)
            return event
        # nats-py never times an async publish out: without this, a lost ack would hold its slot forever.
        timer = asyncio.get_running_loop().call_later(self.ack_timeout_s, ack.cancel)
        ack.add_done_callback(lambda fut: self._acked(fut, timer, what))
        return event

    def _acked(self, fut: asyncio.Future[Any], timer: asyncio.TimerHandle, what: str) -> None:
        timer.cancel()
        if fut.cancelled():
            self._failed(what, TimeoutError(f"no acknowledgement within {self.ack_timeout_s:g}s"))
        elif (exc := fut.exception()) is not None:
            self._failed(what, exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        metrics.EVENTS_UNPUBLISHED.add(1)
        self._next_ack = 0.0  # ask again with the next event, until the stream takes them
        log.warning("could not record event %s: %s", what, exc or type(exc).__name__)

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait (bounded) until every event sent so far is acknowledged or failed: before a clean shutdown."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._js.publish_async_completed()


async def read_events(nc: NatsClient, org: str, *, follow: bool = False, subject_filter: str | None = None,
                      idle_timeout_s: float = 2.0, recent: int | None = None) -> AsyncIterator[CloudEvent]:
    """Replay the org's events from the start (an ordered consumer), then stop when caught up, or keep
    following new ones. ``subject_filter`` is a subject such as ``lattice.v1.acme.events.work.*``; ``recent``:
    start with the stream's last that many events instead of its first."""
    js = nc.jetstream()
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    start: dict[str, Any] = {"deliver_policy": DeliverPolicy.ALL}
    if recent is not None:
        last = (await js.stream_info(subjects.events_stream(org))).state.last_seq
        start = {"config": ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                          opt_start_seq=max(last - recent + 1, 1))}
    sub = await js.subscribe(subject_filter or subjects.events_all(org), cb=queue.put, ordered_consumer=True,
                             stream=subjects.events_stream(org), **start)
    try:
        if not follow and (await js.stream_info(subjects.events_stream(org))).state.messages == 0:
            return
        while True:
            try:
                async with asyncio.timeout(None if follow else idle_timeout_s):
                    msg = await queue.get()
            except TimeoutError:
                return
            try:
                yield CloudEvent.model_validate_json(msg.data)
            except ValueError as exc:
                log.warning("skipping malformed event: %s", exc)
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(*NATS_FAILURES):
            await sub.unsubscribe()

"""Publishing CloudEvents into the org's events stream.

Events are the audit log, not the source of truth (that is KV), so a failed publish is logged and counted but
never fails the state change that caused it. ``Nats-Msg-Id`` makes a retried publish land once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from ..contract import subjects
from ..contract.events import Category, CloudEvent, make_event

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, nc: NatsClient, org: str, source: str) -> None:
        self._js = nc.jetstream()
        self.org = org
        self.source = source
        self.failures = 0

    async def emit(self, category: Category, type_: str, *, subject: str | None = None,
                   data: dict[str, Any] | None = None, traceparent: str | None = None) -> CloudEvent:
        event = make_event(category, type_, org=self.org, source=self.source, subject=subject, data=data,
                           traceparent=traceparent)
        headers = {"Nats-Msg-Id": event.id}
        if traceparent:
            headers["traceparent"] = traceparent
        try:
            await self._js.publish(subjects.event(self.org, category, type_),
                                   event.model_dump_json(exclude_none=True).encode(), headers=headers,
                                   timeout=2.0)
        except Exception as exc:
            self.failures += 1
            log.warning("could not record event %s.%s for %s: %s", category, type_, subject, exc)
        return event


async def read_events(nc: NatsClient, org: str, *, follow: bool = False, subject_filter: str | None = None,
                      idle_timeout_s: float = 2.0) -> AsyncIterator[CloudEvent]:
    """Replay the org's events from the start (an ordered consumer), then stop when caught up, or keep
    following new ones. ``subject_filter`` is a subject such as ``lattice.v1.acme.events.work.*``."""
    js = nc.jetstream()
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await js.subscribe(subject_filter or subjects.events_all(org), cb=queue.put, ordered_consumer=True,
                             stream=subjects.events_stream(org), deliver_policy=DeliverPolicy.ALL)
    try:
        if not follow and (await js.stream_info(subjects.events_stream(org))).state.messages == 0:
            return
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), None if follow else idle_timeout_s)
            except TimeoutError:
                return
            try:
                yield CloudEvent.model_validate_json(msg.data)
            except ValueError as exc:
                log.warning("skipping malformed event: %s", exc)
            if not follow and msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

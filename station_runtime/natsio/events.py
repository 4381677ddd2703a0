"""Publishing CloudEvents into the org's events stream.

Events are the audit log, not the source of truth (that is KV), so a failed publish is logged and counted but
never fails the state change that caused it. ``Nats-Msg-Id`` makes a retried publish land once.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client as NatsClient

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

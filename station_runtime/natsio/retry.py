"""Retrying NATS operations through outages: a write that matters (a work result) waits for NATS to come back
instead of being dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

from ..backoff import compute_backoff

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    TimeoutError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """Pure: is this a failure that goes away when NATS/JetStream is reachable again?"""
    return isinstance(exc, _TRANSIENT)


async def retry_transient(op: Callable[[], Awaitable[T]], *, what: str, deadline_s: float = 120.0) -> T:
    """Run ``op``; on a transient NATS failure retry with backoff until ``deadline_s`` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc) or loop.time() >= deadline:
                raise
            delay = compute_backoff(attempt, base_s=0.1, max_s=2.0)
            log.warning("%s failed (%s); retrying in %.2fs", what, type(exc).__name__, delay)
            await asyncio.sleep(delay)
            attempt += 1

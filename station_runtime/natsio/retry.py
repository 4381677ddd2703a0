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
from ..errors import LatticeError, LatticeUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

#: What a NATS operation raises when NATS is away, slow or refuses: nats-py's own errors (JetStream's derive from
#: them), the socket's, and timeouts. A best-effort send suppresses these and nothing else, so that a bug still
#: shows.
NATS_FAILURES: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)
#: The same, and the lattice's own refusals (a full store, a record superseded): what a best-effort write, such
#: as a progress update or a heartbeat, may meet and shrug off.
BEST_EFFORT_FAILURES: tuple[type[BaseException], ...] = (*NATS_FAILURES, LatticeError)

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


def failure_hint(exc: BaseException) -> str:
    """Pure: what a transient failure may mean, for the log (its own text often says nothing: a 503 has none)."""
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return ("ServiceUnavailableError: JetStream does not answer for this account: the server is starting, it "
                "runs without JetStream, or the account has none (its JetStream limits, natsLimits."
                "jetstreamDiskBytes, ask for more than the server can reserve: its max_file_store)")
    return type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Pure: is this a failure that goes away when NATS/JetStream is reachable again?"""
    return isinstance(exc, _TRANSIENT)


#: While an operation keeps failing, it is said to at most this often (after the first failure).
REMIND_EVERY_S = 30.0


async def retry_transient(op: Callable[[], Awaitable[T]], *, what: str, deadline_s: float | None = 120.0) -> T:
    """Run ``op``; on a transient NATS failure retry with backoff until ``deadline_s`` has passed (None: until it
    succeeds or the task is cancelled: an outcome that must not be lost). Logs the first failure, a reminder every
    half minute while it goes on, and the success after failures: not a line per attempt."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    attempt = 0
    reminded = started
    while True:
        try:
            result = await op()
        except Exception as exc:  # narrowed just below: anything not transient is re-raised at once
            now = loop.time()
            if not is_transient(exc):
                raise
            if deadline_s is not None and now - started >= deadline_s:
                why = str(exc) or type(exc).__name__
                raise LatticeUnavailable(f"{what}: NATS did not answer within {deadline_s:g}s ({why})",
                                         retry_after_s=REMIND_EVERY_S) from exc
            if attempt == 0:
                log.warning("%s failed (%s); retrying until NATS answers", what, failure_hint(exc))
            elif now - reminded >= REMIND_EVERY_S:
                reminded = now
                log.warning("%s still failing after %.0fs (%s)", what, now - started, failure_hint(exc))
            # At most a second apart: a JetStream group that lost its leader is back after 4-9 s (its election),
            # and each extra second between tries is added to every write waiting for it.
            await asyncio.sleep(compute_backoff(attempt, base_s=0.1, max_s=1.0))
            attempt += 1
            continue
        if attempt:
            log.warning("%s done after %.1fs and %d retries", what, loop.time() - started, attempt)
        return result

"""Stopping background tasks so that a stop always ends."""

from __future__ import annotations

import asyncio
from typing import Any

#: How often a task that ran on past a cancel is cancelled again.
RECANCEL_INTERVAL_S = 0.05


async def stop_task(task: asyncio.Task[Any] | None, timeout_s: float = 5.0) -> bool:
    """Cancel ``task`` and wait until it has ended, at most ``timeout_s``; True if it ended.

    One ``cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for`` (inside nats-py's request, among
    others) swallows a cancellation that lands in the same loop pass as the awaited result, and the task runs on.
    So the task is cancelled again until it ends, and the wait is bounded, so a stop never hangs on it. What the
    task raised is retrieved (and dropped: a task being stopped has nobody left to report to).
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(remaining, RECANCEL_INTERVAL_S))
    if not task.cancelled():
        task.exception()
    return True

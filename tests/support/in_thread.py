"""Async servers for synchronous tests (the operator's, against the test control plane): an async context manager
entered and left by an event loop of its own in a thread, so that the test can block on Kubernetes meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from station_runtime.modelsim import ModelSim

T = TypeVar("T")


@contextlib.contextmanager
def in_thread(factory: Callable[[], AbstractAsyncContextManager[T]], *, timeout_s: float = 15.0) -> Iterator[T]:
    """Enter ``factory()`` in a new thread's event loop; yield what it yields; leave it there at the end."""
    ready = threading.Event()
    box: dict[str, object] = {}
    done: asyncio.Event | None = None
    loop = asyncio.new_event_loop()

    async def main() -> None:
        nonlocal done
        done = asyncio.Event()
        try:
            async with factory() as value:
                box["value"] = value
                ready.set()
                await done.wait()
        except BaseException as exc:  # told to the test, which is waiting for ready
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="in-thread", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout_s):
            raise TimeoutError(f"the server in a thread did not start within {timeout_s:g}s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        yield box["value"]  # type: ignore[misc]
    finally:
        if done is not None:
            loop.call_soon_threadsafe(done.set)
        thread.join(timeout_s)
        if not thread.is_alive():
            loop.close()


def modelsim_in_thread(**kwargs: object) -> contextlib.AbstractContextManager[ModelSim]:
    return in_thread(lambda: ModelSim(**kwargs))  # type: ignore[arg-type]

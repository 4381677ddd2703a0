"""modelsim for synchronous tests (the operator's, against the test control plane): served by an event loop of its
own in a thread, so that its requests can be read while the test blocks on Kubernetes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Iterator

from station_runtime.modelsim import ModelSim, Script


@contextlib.contextmanager
def modelsim_in_thread(scripts: Iterable[Script] = (), **kwargs: object) -> Iterator[ModelSim]:
    sim = ModelSim(scripts, **kwargs)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="modelsim", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(sim.start(), loop).result(timeout=10)
        yield sim
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(sim.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

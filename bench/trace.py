"""Where one async work item's time goes, seen from the client: when the record is created, the auction closes,
the winner accepts, the outcome is pushed, and the waiter returns. Median microseconds since submit.

Measured by wrapping a few library methods for the duration of the trace (the library carries no timing code);
the wrappers cost a few microseconds, so the trace runs apart from the latency sample.
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from station_runtime.work import auction, bids, store

#: (class, method, label): the label is stamped when the method first returns during an item.
POINTS: tuple[tuple[type, str, str], ...] = (
    (store.WorkStore, "create", "record_created"),
    (bids.BidCollector, "close", "auction_closed"),
    (auction.Auctioneer, "_hand_over", "winner_accepted"),
    (store.WorkStore, "pushed", "outcome_pushed"),
)


@contextlib.contextmanager
def _stamping(stamps: dict[str, float]) -> Iterator[None]:
    saved = []
    for cls, name, label in POINTS:
        raw = cls.__dict__.get(name)
        if raw is None:  # an older commit (before/after comparisons) without this step
            continue
        saved.append((cls, name, raw))
        setattr(cls, name, _stamp(raw, label, stamps))
    try:
        yield
    finally:
        for cls, name, raw in saved:
            setattr(cls, name, raw)


def _stamp(raw: Any, label: str, stamps: dict[str, float]) -> Any:
    if isinstance(raw, staticmethod):
        fn = raw.__func__

        def plain(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            stamps.setdefault(label, time.perf_counter())
            return result

        return staticmethod(plain)

    if not inspect.iscoroutinefunction(raw):  # a plain method (WorkStore.pushed since it notes the revision)
        def method(*args: Any, **kwargs: Any) -> Any:
            result = raw(*args, **kwargs)
            stamps.setdefault(label, time.perf_counter())
            return result

        return method

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = await raw(*args, **kwargs)
        stamps.setdefault(label, time.perf_counter())
        return result

    return wrapped


async def trace(once: Callable[[], Awaitable[None]], n: int) -> dict[str, float]:
    """Median microseconds from submit to each point, over ``n`` items run one at a time."""
    stamps: dict[str, float] = {}
    rows: list[dict[str, float]] = []
    with _stamping(stamps):
        for _ in range(n):
            stamps.clear()
            t0 = time.perf_counter()
            await once()
            stamps["waiter_returned"] = time.perf_counter()
            rows.append({k: (v - t0) * 1e6 for k, v in stamps.items()})
    labels = [label for _, _, label in POINTS] + ["waiter_returned"]
    return {label: round(statistics.median(r[label] for r in rows if label in r))
            for label in labels if any(label in r for r in rows)}

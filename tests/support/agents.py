"""Agent functions for the ``python`` provider in tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def slow(seconds: Any) -> str:
    """A blocking agent: must run in a thread, never on the station's event loop."""
    time.sleep(float(seconds))
    return f"slept {seconds}"


async def async_upper(text: Any) -> str:
    await asyncio.sleep(0)
    return str(text).upper()


def boom(_: Any) -> None:
    raise RuntimeError("the model caught fire")


def with_context(text: Any, ctx: Any) -> dict[str, Any]:
    return {"input": text, "request_id": ctx.request_id}


def not_json(_: Any) -> object:
    return object()


def counted(text: Any) -> str:
    """Appends its input to the file ``$LATTICE_TEST_RUNS`` (one line per run, so a test counts the runs of each
    item), then takes 1.5 s: long enough for a test to cut NATS away while it runs."""
    import os

    with open(os.environ["LATTICE_TEST_RUNS"], "a") as runs:
        runs.write(f"{text}\n")
    time.sleep(1.5)
    return str(text)


def counted_briefly(text: Any) -> str:
    """:func:`counted` in 0.4 s: many items pass while a test kills NATS servers under them."""
    import os

    with open(os.environ["LATTICE_TEST_RUNS"], "a") as runs:
        runs.write(f"{text}\n")
    time.sleep(0.4)
    return str(text)


def big(text: Any) -> str:
    """An output over the inline limit of a work record (it goes to the results store)."""
    return f"{text}:" + "x" * 100_000


def measure(text: Any) -> dict[str, Any]:
    return {"length": len(str(text)), "head": str(text)[:6]}

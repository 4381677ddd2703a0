"""Python function tools for the agent-loop tests (``tools: [{function: tests.support.agent_tools:add}]``)."""

from __future__ import annotations

import asyncio

CALLS: list[str] = []


def add(a: int, b: int) -> int:
    """Add two integers."""
    CALLS.append(f"add({a},{b})")
    return a + b


def weather(city: str) -> dict[str, object]:
    """The weather in a city."""
    CALLS.append(f"weather({city})")
    return {"city": city, "sky": "clear", "celsius": 21}


def explode() -> str:
    """Always raises."""
    raise RuntimeError("the tool blew up")


async def sleepy(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "awake"


def huge(size: int) -> str:
    """A long answer."""
    return "y" * size


#: Where :func:`effect` records its side effects (one line per call), for tests that count them across processes.
EFFECTS_ENV = "LATTICE_TEST_EFFECTS"


async def effect(n: int, seconds: float = 0.0, idempotency_key: str = "") -> str:
    """Do side effect number n (after a nap of ``seconds``): a line in the effects file."""
    import os
    from pathlib import Path

    if seconds:
        await asyncio.sleep(seconds)
    with Path(os.environ[EFFECTS_ENV]).open("a") as out:
        out.write(f"{n} {idempotency_key}\n")
    return f"effect {n} done"

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

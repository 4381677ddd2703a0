"""Server-sent events from a model API, read from the raw response lines.

Both providers read their streams here rather than through their SDK's stream objects: those build a pydantic
object per event (~400 us each), which made one station core the limit at ~2,000 streamed tokens/s
(docs/benchmarks.md, agent streams). The SDKs still make the request (auth, base URL, headers, retries before the
answer starts) and raise the API's status errors.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ...contract.messages import ErrorCode
from .base import ModelError, redact


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a stream's ``data:`` lines, until ``data: [DONE]`` or the end.

    Event names, comments and blank separators are skipped (both APIs put the event's type in its data too). The
    lines are read to their end even after ``[DONE]``: a response left unread is closed instead of going back to
    the connection pool, and every turn would open a new connection.
    """
    done = False
    async for line in lines:
        if done or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            raise ModelError("the model API sent a stream event that is not JSON", retryable=True,
                             code=ErrorCode.MODEL_UNAVAILABLE, started=True) from None
        if isinstance(event, dict):
            yield event


def count(value: Any) -> int:
    """A token count from a model's JSON: anything that is not a non-negative integer counts as nothing."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def tool_arguments(text: str) -> dict[str, Any] | str:
    """A tool call's arguments from its JSON text (streamed fragments joined; empty: the tool takes none). JSON
    that is not an object stays text, which the tool box rejects with a message the model reads."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def broke_off(exc: Exception, key: str | None) -> ModelError:
    """A stream that broke off mid-answer (the HTTP client's own errors): retryable, and said without the key."""
    return ModelError(f"the model API failed mid-answer: {type(exc).__name__}: {redact(str(exc), key)}",
                      retryable=True, code=ErrorCode.MODEL_UNAVAILABLE, started=True, kind="stream")

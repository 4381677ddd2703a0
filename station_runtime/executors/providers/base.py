"""What a model provider adapter does for the agent loop: one turn (a model call) from a provider-neutral
conversation, streamed text reported as it arrives, and errors sorted into "try again" and "do not".

The official SDKs retry 429, 5xx, overloaded and connection errors themselves (honouring ``Retry-After``) before
a response starts; a failure inside a stream reaches the loop as a retryable :class:`ModelError`, and the loop
retries the turn (a model call has no side effect).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ...contract.messages import ErrorCode
from ..base import AgentFailure
from ..conversation import Message, ToolDefinition, Turn

TextFn = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class TurnRequest:
    system: str
    messages: Sequence[Message]
    tools: Sequence[ToolDefinition]
    #: Output tokens this call may produce (the model's cap, lowered to what the budget has left).
    max_tokens: int | None = None
    output_schema: dict[str, Any] | None = None


class ModelError(Exception):
    """A model call failed. ``retryable``: the same call may succeed later (the loop retries it, after
    ``retry_after_s`` if the API said so); ``started``: the failure came inside a response (mid-stream), after the
    SDK's own retries could apply."""

    def __init__(self, message: str, *, retryable: bool, code: ErrorCode = ErrorCode.AGENT_ERROR,
                 retry_after_s: float | None = None, started: bool = False, status: int | None = None,
                 kind: str = "") -> None:
        self.retryable = retryable
        self.code = code
        self.retry_after_s = retry_after_s
        self.started = started
        #: The HTTP status the API answered, if it answered; else ``kind`` says what failed (connection, stream).
        self.status = status
        self.kind = kind
        super().__init__(message)

    @property
    def error_type(self) -> str:
        """A bounded name for what failed (a metric label, a span's ``error.type``): the status code ("429"),
        or the kind of failure ("connection", "stream")."""
        if self.status is not None and self.status != 200:
            return str(self.status)
        return self.kind or ("stream" if self.started else "error")


class Provider(Protocol):
    async def turn(self, request: TurnRequest, on_text: TextFn) -> Turn: ...

    async def aclose(self) -> None: ...


def read_api_key(env_name: str | None, file: str | None, default_env: str) -> str | None:
    """The API key, from a file (``${VAR}`` expanded: the operator mounts Secrets under a directory it names) or an
    environment variable. Never logged, never in an error message."""
    if file:
        file = os.path.expandvars(file)
        try:
            return Path(file).read_text().strip() or None
        except OSError as exc:
            raise AgentFailure(f"cannot read API key file {file}: {exc.strerror}", ErrorCode.BAD_REQUEST) from exc
    return os.environ.get(env_name or default_env) or None


def redact(message: str, secret: str | None) -> str:
    """An error message without the key in it (some APIs quote part of a wrong key back)."""
    if secret and len(secret) >= 4:
        message = message.replace(secret, "[redacted]")
        for n in (12, 8):  # the prefixes an API may echo ("Incorrect API key provided: sk-abc...")
            if len(secret) > n:
                message = message.replace(secret[:n], "[redacted]")
    return message[:1000]


def retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header, bounded to a minute."""
    if headers is None:
        return None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return min(float(ms) / 1000, 60.0)
        if (seconds := headers.get("retry-after")) is not None:
            return min(float(seconds), 60.0)
    except (TypeError, ValueError):
        return None
    return None

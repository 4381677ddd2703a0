"""The one interface every agent executor implements, whatever runs the agent (echo, Python, an LLM API)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..contract.messages import AgentDefinition, ErrorCode, Payload
from ..errors import LatticeError


@dataclass(frozen=True)
class Progress:
    percent: float | None = None
    message: str = ""
    #: Streamed LLM output since the last report.
    tokens: str = ""


ProgressFn = Callable[[Progress], Awaitable[None]]


async def _no_progress(_: Progress) -> None:
    return None


@dataclass
class Execution:
    """What an executor gets for one run."""

    input: Payload
    context: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn = _no_progress
    request_id: str = ""


@dataclass(frozen=True)
class Outcome:
    output: Payload
    usage: dict[str, int] = field(default_factory=dict)


class AgentFailure(LatticeError):
    """The agent could not produce a result. ``code`` tells the caller whether retrying elsewhere may help."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.AGENT_ERROR) -> None:
        self.code = code
        super().__init__(message)


class Executor(Protocol):
    definition: AgentDefinition

    async def run(self, execution: Execution) -> Outcome: ...

    async def aclose(self) -> None: ...

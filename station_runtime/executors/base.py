"""The one interface every agent executor implements, whatever runs the agent (echo, Python, an LLM with tools)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..contract.messages import AgentDefinition, ErrorCode, JournalEntry, JournalKind, Payload, Usage
from ..contract.specs import Budget, WorkItemSpec
from ..errors import LatticeError

if TYPE_CHECKING:
    from .tools.lattice import Delegate


@dataclass(frozen=True)
class Progress:
    percent: float | None = None
    message: str = ""
    #: Streamed LLM output since the last report.
    tokens: str = ""
    #: Agent runs: the turn (model call) under way, the tool being called or answered, usage so far.
    turn: int | None = None
    tool: str = ""
    usage: Usage | None = None


ProgressFn = Callable[[Progress], Awaitable[None]]


class RunJournal(Protocol):
    """The journal of the run an execution belongs to."""

    @property
    def entries(self) -> Sequence[JournalEntry]:
        """What the attempt found when it started (empty: a fresh run)."""
        ...

    async def append(self, kind: JournalKind, **fields: Any) -> JournalEntry:
        """Append durably (the entry is stored when this returns), numbered after the last one."""
        ...


async def _no_progress(_: Progress) -> None:
    return None


@dataclass
class Execution:
    """What an executor gets for one run."""

    input: Payload
    context: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn = _no_progress
    request_id: str = ""
    #: The work item being run (async work): its limits and budget apply on top of the agent's.
    work: WorkItemSpec | None = None
    #: What a delegating parent has left for this run to spend.
    inherited_budget: Budget | None = None
    #: Seconds until the run's deadline (startToClose, or the invoke's timeout): delegated work gets what is left.
    deadline_s: float | None = None
    #: How deep this run is in a chain of delegations.
    depth: int = 0
    #: Delegation through the lattice (lattice tools); None where the runtime offers none (tests, invoke).
    delegate: Delegate | None = None
    #: The run's journal (async work of an agent that keeps one); None: the run starts afresh each attempt.
    journal: RunJournal | None = None


@dataclass(frozen=True)
class Outcome:
    output: Payload
    usage: Usage = field(default_factory=Usage)
    #: Work delegated through lattice tools during the run.
    children: tuple[str, ...] = ()


class AgentFailure(LatticeError):
    """The agent could not produce a result. ``code`` tells the caller whether retrying elsewhere may help;
    ``usage`` is what the run spent before it failed (a budget stop records it)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.AGENT_ERROR, *, usage: Usage | None = None,
                 children: tuple[str, ...] = ()) -> None:
        self.code = code
        self.usage = usage
        self.children = children
        super().__init__(message)


class Executor(Protocol):
    definition: AgentDefinition

    async def run(self, execution: Execution) -> Outcome: ...

    async def aclose(self) -> None: ...


class Startable(Protocol):
    """Executors that must do I/O before they can run (connect tool servers, discover tools)."""

    async def start(self) -> None: ...

    def tool_names(self) -> list[str]: ...

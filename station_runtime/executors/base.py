"""The one interface every agent executor implements, whatever runs the agent (echo, Python, an LLM with tools)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..contract.messages import (
    AgentDefinition,
    ErrorCode,
    HumanDecision,
    JournalEntry,
    JournalKind,
    Payload,
    Usage,
    Waiting,
)
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
    #: What people decided for the run's calls that waited for them, by the call's idempotency key.
    decisions: Mapping[str, HumanDecision] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    output: Payload
    usage: Usage = field(default_factory=Usage)
    #: Work delegated through lattice tools during the run.
    children: tuple[str, ...] = ()
    #: ``usage`` is the whole run's, every attempt's (a journalled run): it replaces what the record has.
    whole_run: bool = False


class AgentFailure(LatticeError):
    """The agent could not produce a result. ``code`` tells the caller whether retrying elsewhere may help;
    ``usage`` is what the run spent before it failed (a budget stop records it)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.AGENT_ERROR, *, usage: Usage | None = None,
                 children: tuple[str, ...] = (), whole_run: bool = False) -> None:
        self.code = code
        self.usage = usage
        self.children = children
        self.whole_run = whole_run
        super().__init__(message)


class Suspended(AgentFailure):
    """The run stops to wait for a person (``waiting``): the station records it and frees the slot; a decision
    sends the work back to be placed, and the next attempt resumes from the journal with the decision."""

    def __init__(self, waiting: Waiting, *, usage: Usage | None = None, children: tuple[str, ...] = (),
                 whole_run: bool = False) -> None:
        self.waiting = waiting
        super().__init__(f"waiting for {waiting.summary()}", ErrorCode.AGENT_ERROR, usage=usage, children=children,
                         whole_run=whole_run)


class Executor(Protocol):
    definition: AgentDefinition

    async def run(self, execution: Execution) -> Outcome: ...

    async def aclose(self) -> None: ...


class Startable(Protocol):
    """Executors that must do I/O before they can run (connect tool servers, discover tools)."""

    async def start(self) -> None: ...

    def tool_names(self) -> list[str]: ...

"""A run's journal as the agent loop sees it: what the loop appends before it acts, and the run rebuilt from it.

The loop appends a ``turn`` entry once the model has answered (before it runs the calls of that answer), a
``call`` entry just before a tool call starts, and a ``result`` entry as soon as the call has answered. A new
attempt replays the entries (:func:`replay`): finished turns come back as the conversation (the model is not asked
again), finished calls as their results (they do not run again), and the calls of the last turn sort into three:
answered, started with no answer (they may have had their side effect: the tool's policy decides), never started.

Pure: the journal's storage (a JetStream stream, large entries in the object store) is the station's
(:mod:`station_runtime.work.journal`); this module only knows entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..contract.messages import ErrorCode, JournalEntry, JournalKind, Usage
from .base import AgentFailure
from .conversation import Message, ToolCall
from .tools.base import ToolResult


class JournalBroken(AgentFailure):
    """The journal cannot be replayed (an entry is missing or out of order): the run must not guess what it did,
    so a person decides (the work is escalated)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.UNKNOWN_OUTCOME)


def call_of(entry: JournalEntry) -> list[ToolCall]:
    return [ToolCall(c.id, c.name, c.arguments) for c in entry.tool_calls]


@dataclass
class LastTurn:
    """The calls of the last turn, as far as the journal knows them."""

    entry: JournalEntry
    calls: list[ToolCall]
    #: The run's tool calls counted before this turn (for the limit) and the model's calls before it (for keys).
    counted_before: int
    seen_before: int
    results: dict[str, ToolResult] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    #: Calls refused by maxToolCalls (their results carry no call index): not counted against it.
    over_limit: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return all(c.id in self.results for c in self.calls)


@dataclass
class RunState:
    """What a run has done so far: the conversation, what it spent, the work it delegated."""

    messages: list[Message]
    usage: Usage = field(default_factory=Usage)
    tool_calls: int = 0
    #: Tool calls the model has made (counted or not): the next call's index is one more.
    calls_seen: int = 0
    children: list[str] = field(default_factory=list)
    #: Whether ``usage`` is the whole run's (every attempt's, from the journal) rather than this attempt's.
    whole_run: bool = False

    def heard(self, call: ToolCall, result: ToolResult) -> None:
        """A call's result joins the conversation (and its child's spend the run's)."""
        if result.delegated is not None:
            self.usage += result.delegated
        if result.child is not None and result.child not in self.children:
            self.children.append(result.child)
        self.messages.append(Message("tool", text=result.text, tool_call_id=call.id, tool_name=call.name,
                                     is_error=result.is_error))

    def failure(self, message: str, code: ErrorCode) -> AgentFailure:
        return AgentFailure(message, code, usage=self.usage, children=tuple(self.children),
                            whole_run=self.whole_run)


@dataclass
class Replay:
    """The run rebuilt from its journal, up to the last turn (whose calls :attr:`last` holds, if it had any):
    ``state`` counts the turns before ``last`` (its calls are counted when they are run or replayed)."""

    state: RunState
    #: Turns the model has answered.
    turns: int = 0
    last: LastTurn | None = None
    #: The final answer, if the last turn gave one (no tool calls): the run only has to report it.
    answer: JournalEntry | None = None


def result_of(entry: JournalEntry) -> ToolResult:
    return ToolResult(entry.text, entry.is_error, entry.delegated, entry.child)


def replay(entries: Sequence[JournalEntry], first: Message) -> Replay:
    """Rebuild a run from its journal. Raises :class:`JournalBroken` if the entries are not numbered 1, 2, …"""
    for expected, entry in enumerate(entries, start=1):
        if entry.n != expected:
            raise JournalBroken(f"the journal of {entry.work_id} has entry {entry.n} where {expected} belongs "
                                "(an entry is missing): the run cannot resume safely")
    state = Replay(RunState(messages=[first], whole_run=True))
    run = state.state
    for entry in entries:
        if entry.kind == JournalKind.TURN:
            _close(state)
            state.turns = max(state.turns, entry.turn)
            calls = call_of(entry)
            run.usage += entry.usage or Usage()
            run.messages.append(Message("assistant", text=entry.text, tool_calls=tuple(calls)))
            if calls:
                state.last = LastTurn(entry, calls, run.tool_calls, run.calls_seen, started=set(entry.started))
            else:
                state.answer = entry
        elif state.last is not None and entry.kind == JournalKind.CALL:
            state.last.started.add(entry.call_id)
        elif state.last is not None and entry.kind == JournalKind.RESULT:
            state.last.results.setdefault(entry.call_id, result_of(entry))
            if entry.call_index == 0:
                state.last.over_limit.add(entry.call_id)
    if state.last is not None and state.last.complete:
        _close(state)
    return state


def _close(state: Replay) -> None:
    """A turn all of whose calls answered: its results join the conversation, as the loop appended them."""
    last = state.last
    if last is None:
        return
    if not last.complete:
        raise JournalBroken(f"the journal of {last.entry.work_id} has turn {last.entry.turn + 1} after turn "
                            f"{last.entry.turn} whose calls did not all answer")
    state.last = None
    run = state.state
    # Counted against maxToolCalls as the loop counts them: every call the limit allowed (run, or rejected by a
    # person), not the ones it refused.
    started = sum(1 for c in last.calls if c.id not in last.over_limit)
    run.tool_calls += started
    run.calls_seen += len(last.calls)
    run.usage += Usage(tool_calls=started)
    for call in last.calls:
        run.heard(call, last.results[call.id])

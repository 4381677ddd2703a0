"""Tools as the agent loop sees them, and the tool box that runs the model's calls.

Whatever a tool is (an MCP server's, a Python function, delegation through the lattice), a call the model makes
is checked against the tool's JSON schema, bounded in time and in the size of what it returns, and any failure
(unknown tool, arguments that do not match, an exception, a hang, a huge result) becomes an error result the
model sees and can act on. Nothing a tool does can crash the station or lose the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import jsonschema
from jsonschema.exceptions import SchemaError

from ...contract.messages import Usage
from ...contract.specs import Budget
from ..base import Execution
from ..conversation import ToolCall, ToolDefinition

log = logging.getLogger(__name__)

#: What a tool result may say to the model; the rest is cut, with a note saying how much was cut.
MAX_RESULT_CHARS = 32_000
#: Tool names as both APIs accept them.
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class ToolResult:
    text: str
    is_error: bool = False
    #: Lattice tools: what the delegated work spent (counted against the run's budget) and its id.
    delegated: Usage | None = None
    child: str | None = None


def idempotency_key(work_id: str, call_index: int) -> str:
    """A tool call's key: the same for the same call in every attempt of the run (the index is its position
    among the calls the model made, 1-based, which a replayed run makes again in the same order)."""
    return f"{work_id}/{call_index}"


@dataclass
class ToolContext:
    """What a tool call may know of its run: the execution, the model's id for the call, and what the run has
    left (seconds, budget) for delegated work."""

    execution: Execution
    call_id: str
    remaining_s: float | None = None
    remaining_budget: Budget | None = None
    #: The same for this call in every attempt of the run (``{work id}/{call index}``): a tool with side effects
    #: uses it to do them once.
    idempotency_key: str = ""


class Tool(Protocol):
    definition: ToolDefinition
    #: Where the tool comes from: a ToolServer's name, ``mcp``, ``function`` or ``lattice``.
    source: str
    #: The tool's own bound on one call; None: the agent's ``toolTimeoutSeconds``.
    timeout_s: float | None

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult: ...


def truncate(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[truncated: {len(text) - limit} more characters]"


def as_text(value: Any) -> str:
    """A tool's return value as the model reads it: text as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


#: What happens to a call that started but never answered (its station died): run again with the same key, or
#: stop for a person to decide.
UnknownOutcome = Literal["retry", "escalate"]


@dataclass
class _Entry:
    tool: Tool
    validator: Any = None
    unknown_outcome: UnknownOutcome = "escalate"
    #: Each call waits for a person's approval before it runs.
    require_approval: bool = False


@dataclass
class ToolBox:
    """The tools of one agent, by name."""

    default_timeout_s: float = 60.0
    _entries: dict[str, _Entry] = field(default_factory=dict)

    def add(self, tool: Tool, unknown_outcome: UnknownOutcome | None = None, require_approval: bool = False) -> None:
        """Add ``tool``; ``unknown_outcome``: its policy (default: the tool's own, else escalate);
        ``require_approval``: each call waits for a person's approval."""
        name = tool.definition.name
        if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
            raise ValueError(f"tool name {name!r} ({tool.source}) is not 1-64 letters, digits, '_' or '-'")
        if (clash := self._entries.get(name)) is not None:
            raise ValueError(f"two tools are named {name!r} ({clash.tool.source} and {tool.source}): "
                             "allow only one of them on this agent")
        validator = None
        try:
            cls = jsonschema.validators.validator_for(tool.definition.parameters)
            cls.check_schema(tool.definition.parameters)
            validator = cls(tool.definition.parameters)
        except SchemaError as exc:  # the server's schema is broken: its calls go unchecked rather than unusable
            log.warning("tool %s (%s): its input schema is not valid JSON Schema, calls go unchecked: %s",
                        name, tool.source, exc.message)
        policy = unknown_outcome or getattr(tool, "unknown_outcome", None) or "escalate"
        self._entries[name] = _Entry(tool, validator, policy, require_approval)

    def extend(self, tools: Iterable[Tool], unknown_outcome: UnknownOutcome | None = None,
               require_approval: bool = False) -> None:
        for tool in tools:
            self.add(tool, unknown_outcome, require_approval)

    def needs_approval(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.require_approval

    def asks_a_person(self, name: str) -> bool:
        """Whether ``name`` is the ask_user tool (its call waits for a person's reply)."""
        entry = self._entries.get(name)
        return entry is not None and getattr(entry.tool, "asks_a_person", False)

    def unknown_outcome(self, name: str) -> UnknownOutcome:
        """The policy of tool ``name`` for a call that started and never answered (a name it does not have:
        retry, since such a call only ever returned an error)."""
        entry = self._entries.get(name)
        return "retry" if entry is None else entry.unknown_outcome

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def definitions(self) -> list[ToolDefinition]:
        return [e.tool.definition for e in self._entries.values()]

    def listing(self) -> list[str]:
        """``source:name`` of every tool, as stations report them."""
        return [f"{e.tool.source}:{name}" for name, e in self._entries.items()]

    async def run(self, call: ToolCall, ctx: ToolContext) -> ToolResult:
        entry = self._entries.get(call.name)
        if entry is None:
            known = ", ".join(self._entries) or "none"
            return ToolResult(f"error: there is no tool named {call.name!r}; the tools are: {known}", True)
        arguments = call.arguments
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as exc:
                return ToolResult(f"error: the arguments are not valid JSON ({exc}); send a JSON object that "
                                  "matches the tool's schema", True)
        if not isinstance(arguments, dict):
            return ToolResult(f"error: the arguments must be a JSON object, not {type(arguments).__name__}", True)
        if entry.validator is not None:
            problems = sorted(entry.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
            if problems:
                said = "; ".join(f"{'/'.join(map(str, p.absolute_path)) or 'arguments'}: {p.message}"
                                 for p in problems[:5])
                return ToolResult(f"error: the arguments do not match {call.name}'s schema: {said}", True)
        timeout = entry.tool.timeout_s or self.default_timeout_s
        if ctx.remaining_s is not None:
            timeout = min(timeout, max(ctx.remaining_s, 0.001))
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                result = await entry.tool.call(arguments, ctx)
        except TimeoutError as exc:
            if bound.expired():
                return ToolResult(f"error: {call.name} did not answer within {timeout:g}s", True)
            # A timeout inside the tool (its own request timed out), not ours: said as the tool's failure.
            log.info("tool %s (%s) timed out inside: %r", call.name, entry.tool.source, exc)
            return ToolResult(f"error: {call.name} failed: {type(exc).__name__}: {truncate(str(exc), 2000)}", True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a tool may raise anything: the model hears of it, the run goes on
            log.info("tool %s (%s) failed: %r", call.name, entry.tool.source, exc)
            return ToolResult(f"error: {call.name} failed: {type(exc).__name__}: {truncate(str(exc), 2000)}", True)
        if len(result.text) > MAX_RESULT_CHARS:
            result = ToolResult(truncate(result.text), result.is_error, result.delegated, result.child)
        return result

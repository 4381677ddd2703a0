"""Lattice tools: an agent hands work to other agents through the lattice.

``lattice_submit`` creates child work (auctioned like any work) and returns its id at once, so a model can fan out
several children in one turn; ``lattice_await`` waits for children and returns their results; ``lattice_invoke``
runs an agent synchronously and returns its answer. A child records its parent, inherits what is left of the
parent's deadline and budget, and is one level deeper: past the agent's ``maxDelegationDepth`` a call is refused
with an error the model sees. A child's id is derived from the parent and the call's idempotency key (its
position in the run), so submitting the same call again (a resumed run) finds the same child instead of starting
a second one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from ...contract.ids import MAX_ID_LENGTH
from ...contract.messages import Payload, Usage
from ...contract.specs import Budget, LatticeToolName
from ..conversation import ToolDefinition
from .base import ToolContext, ToolResult, as_text, idempotency_key

#: The most children one lattice_await waits for.
MAX_AWAIT = 64


@dataclass(frozen=True)
class ChildRequest:
    work_id: str
    parent_id: str
    agent: str | None
    capability: str | None
    input: Payload
    depth: int
    deadline_s: float | None
    budget: Budget | None


@dataclass(frozen=True)
class ChildOutcome:
    work_id: str
    phase: str
    result: Payload = None
    error: str = ""
    usage: Usage | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"work_id": self.work_id, "phase": self.phase}
        if self.error:
            out["error"] = self.error
        else:
            out["result"] = self.result
        return out


class Delegate(Protocol):
    """What the runtime offers lattice tools (the station implements it on its own connection)."""

    async def submit(self, request: ChildRequest) -> str:
        """Create (idempotently, by ``request.work_id``) and place the child; return its id."""
        ...

    async def wait(self, work_id: str, timeout_s: float | None) -> ChildOutcome:
        """The child's outcome once it is finished (its phase if ``timeout_s`` passes first)."""
        ...

    async def invoke(self, request: ChildRequest) -> ChildOutcome:
        """Run an agent now (child work, awaited at once) and return its answer."""
        ...


def child_id(parent_id: str, key: str) -> str:
    """Deterministic per (parent, tool call: its idempotency key), at most the work id length."""
    digest = hashlib.blake2b(f"{parent_id}/{key}".encode(), digest_size=6).hexdigest()
    return f"{parent_id[:MAX_ID_LENGTH - 14]}-d{digest}"


def child_of(parent_id: str, call_index: int) -> str:
    """The id of the child that the run's ``call_index``-th tool call (1-based, counting every call the model
    made) submits: what a script or a test can know before the run."""
    return child_id(parent_id, idempotency_key(parent_id, call_index))


_TARGET = {
    "agent": {"type": "string", "description": "The agent to run, by name."},
    "capability": {"type": "string", "description": "Or: any agent with this capability."},
    "input": {"description": "The input for that agent: text or a JSON object."},
}


def _definitions(delegate_to: list[str]) -> dict[LatticeToolName, ToolDefinition]:
    who = f" Agents you may use: {', '.join(delegate_to)}." if delegate_to else ""
    return {
        "submit": ToolDefinition(
            "lattice_submit",
            "Hand a piece of work to another agent through the lattice. Returns at once with the work's id; "
            f"call lattice_await to get its result. Submit several in one turn to run them in parallel.{who}",
            {"type": "object", "properties": _TARGET, "required": ["input"], "additionalProperties": False}),
        "await": ToolDefinition(
            "lattice_await",
            "Wait for work handed out with lattice_submit and return each result (or error).",
            {"type": "object", "properties": {
                "work_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_AWAIT},
                "timeout_seconds": {"type": "number", "exclusiveMinimum": 0}},
             "required": ["work_ids"], "additionalProperties": False}),
        "invoke": ToolDefinition(
            "lattice_invoke",
            f"Run another agent now and return its answer (for quick questions; use lattice_submit for long "
            f"work).{who}",
            {"type": "object", "properties": _TARGET, "required": ["input"], "additionalProperties": False}),
    }


class LatticeTool:
    source = "lattice"
    #: Bounded by what is left of the run's deadline instead (a child may take long).
    timeout_s: float | None = 24 * 3600.0
    #: A call that may have started is safe to make again: the child's id is the call's key, so submitting it
    #: again finds the child instead of starting a second one.
    unknown_outcome = "retry"

    def __init__(self, which: LatticeToolName, delegate_to: list[str], max_depth: int) -> None:
        self.which = which
        self.definition = _definitions(delegate_to)[which]
        self.delegate_to = delegate_to
        self.max_depth = max_depth

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        delegate = ctx.execution.delegate
        if delegate is None:
            return ToolResult("error: delegation is not available where this agent runs", True)
        if self.which == "await":
            return await self._await(delegate, arguments, ctx)
        agent, capability = arguments.get("agent"), arguments.get("capability")
        if not agent and not capability:
            return ToolResult("error: name the agent (or a capability) to hand the work to", True)
        if agent and self.delegate_to and agent not in self.delegate_to:
            return ToolResult(f"error: this agent may not delegate to {agent!r}; it may use: "
                              f"{', '.join(self.delegate_to)}", True)
        depth = ctx.execution.depth + 1
        if depth > self.max_depth:
            return ToolResult(f"error: delegation depth limit reached ({self.max_depth} levels): do this part "
                              "yourself or answer with what you have", True)
        parent = ctx.execution.request_id or "run"
        child = child_id(parent, ctx.idempotency_key or ctx.call_id)
        request = ChildRequest(work_id=child, parent_id=parent, agent=agent,
                               capability=capability, input=arguments.get("input", ""), depth=depth,
                               deadline_s=ctx.remaining_s, budget=ctx.remaining_budget)
        if self.which == "invoke":
            outcome = await delegate.invoke(request)
            return ToolResult(as_text(outcome.as_dict()), bool(outcome.error),
                              delegated=_delegated(outcome.usage or Usage()), child=outcome.work_id)
        work_id = await delegate.submit(request)
        return ToolResult(json.dumps({"work_id": work_id, "agent": agent, "capability": capability}), child=work_id)

    async def _await(self, delegate: Delegate, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        ids = [str(i) for i in arguments.get("work_ids", [])][:MAX_AWAIT]
        timeout = arguments.get("timeout_seconds")
        limit = ctx.remaining_s if timeout is None else min(float(timeout), ctx.remaining_s or float(timeout))
        outcomes = await asyncio.gather(*(delegate.wait(work_id, limit) for work_id in ids))
        usage = Usage()
        for outcome in outcomes:
            if outcome.usage is not None:
                usage += outcome.usage
        failed = all(o.error for o in outcomes)
        return ToolResult(as_text([o.as_dict() for o in outcomes]), failed, delegated=_delegated(usage))


def _delegated(usage: Usage) -> Usage:
    """A child's whole spend, as the parent counts it (its own and its children's)."""
    return Usage(delegated_tokens=usage.budget_tokens, delegated_cost_usd=usage.budget_cost_usd)


def lattice_tools(which: list[LatticeToolName], delegate_to: list[str], max_depth: int) -> list[LatticeTool]:
    return [LatticeTool(w, delegate_to, max_depth) for w in dict.fromkeys(which)]

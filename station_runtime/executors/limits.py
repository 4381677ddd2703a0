"""Pure decisions about what a run may still spend: its limits (the agent's, overridden or tightened by the work
item's and by what a delegating parent has left), the cost of a model call, and whether the run must stop.

The station enforces these outside the model: the model is never asked to respect a budget, it is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from ..contract.messages import ErrorCode, Usage
from ..contract.specs import AgentSpec, Budget, Price, WorkItemSpec


@dataclass(frozen=True)
class RunLimits:
    max_turns: int
    max_tool_calls: int
    tool_timeout_s: float
    max_tokens: int | None = None
    max_cost_usd: float | None = None

    def tightened(self, budget: Budget | None) -> RunLimits:
        """These limits with a budget applied on top: the tighter of each bound wins."""
        if budget is None:
            return self
        return replace(self, max_tokens=_lower(self.max_tokens, budget.max_tokens),
                       max_cost_usd=_lower(self.max_cost_usd, budget.max_cost_usd))


T = TypeVar("T", int, float)


def _lower(a: T | None, b: T | None) -> T | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def run_limits(agent: AgentSpec, work: WorkItemSpec | None = None, inherited: Budget | None = None) -> RunLimits:
    """The agent's limits; a work item's maxTurns and maxToolCalls override them, its budget and one inherited
    from a delegating parent tighten them."""
    limits = RunLimits(
        max_turns=work.max_turns if work is not None and work.max_turns is not None else agent.max_turns,
        max_tool_calls=(work.max_tool_calls if work is not None and work.max_tool_calls is not None
                        else agent.max_tool_calls),
        tool_timeout_s=agent.tool_timeout_seconds,
        max_tokens=agent.budget.max_tokens, max_cost_usd=agent.budget.max_cost_usd)
    return limits.tightened(work.budget if work is not None else None).tightened(inherited)


def cost_usd(price: Price | None, usage: Usage) -> float:
    """What one model call's usage costs. ``input_tokens`` counts every input token (cache reads and writes
    included, as OpenAI reports them; the Anthropic adapter adds them up the same way)."""
    if price is None:
        return 0.0
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    plain = usage.input_tokens - cached - written
    cached_price = price.input_per_million_usd if price.cached_input_per_million_usd is None \
        else price.cached_input_per_million_usd
    write_price = price.input_per_million_usd if price.cache_write_per_million_usd is None \
        else price.cache_write_per_million_usd
    return (plain * price.input_per_million_usd + cached * cached_price + written * write_price
            + usage.output_tokens * price.output_per_million_usd) / 1_000_000


@dataclass(frozen=True)
class Stop:
    """Why a run must stop now, with the error code its outcome gets."""

    code: ErrorCode
    reason: str


def over_budget(limits: RunLimits, usage: Usage) -> Stop | None:
    """Has the run (with what its children spent) reached a budget? Checked before every model call and after
    each: a run at its budget makes no further call."""
    if limits.max_tokens is not None and usage.budget_tokens >= limits.max_tokens:
        return Stop(ErrorCode.BUDGET_EXCEEDED,
                    f"token budget reached: {usage.budget_tokens} of maxTokens {limits.max_tokens} used")
    if limits.max_cost_usd is not None and usage.budget_cost_usd >= limits.max_cost_usd:
        return Stop(ErrorCode.BUDGET_EXCEEDED,
                    f"cost budget reached: ${usage.budget_cost_usd:.4f} of maxCostUsd ${limits.max_cost_usd:g} spent")
    return None


def output_cap(limits: RunLimits, usage: Usage, model_max_tokens: int | None) -> int | None:
    """The output tokens the next call may produce: the model's own cap, lowered to what the token budget has
    left, so that one call cannot run far past the budget."""
    if limits.max_tokens is None:
        return model_max_tokens
    left = max(limits.max_tokens - usage.budget_tokens, 1)
    return left if model_max_tokens is None else min(model_max_tokens, left)


def remaining_budget(limits: RunLimits, usage: Usage) -> Budget | None:
    """What a child delegated now may spend: the run's budget less what the run (and its children) spent."""
    if limits.max_tokens is None and limits.max_cost_usd is None:
        return None
    tokens = None if limits.max_tokens is None else max(limits.max_tokens - usage.budget_tokens, 1)
    cost = None if limits.max_cost_usd is None else max(limits.max_cost_usd - usage.budget_cost_usd, 1e-9)
    return Budget(max_tokens=tokens, max_cost_usd=cost)


def tool_calls_allowed(limits: RunLimits, made: int, asked: int) -> int:
    """How many of the ``asked`` calls of a turn may run, ``made`` having run already."""
    return max(min(asked, limits.max_tool_calls - made), 0)

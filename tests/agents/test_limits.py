"""The pure decisions about what a run may spend: limits merged from agent, work item and parent; cost; stops."""

from __future__ import annotations

import pytest

from station_runtime.contract.messages import ErrorCode, Usage
from station_runtime.contract.specs import AgentSpec, Budget, ModelSpec, Price, WorkItemSpec
from station_runtime.executors.limits import (
    RunLimits,
    cost_usd,
    output_cap,
    over_budget,
    remaining_budget,
    run_limits,
    tool_calls_allowed,
)

pytestmark = pytest.mark.timeout(10)


def agent(**kwargs: object) -> AgentSpec:
    return AgentSpec(model=ModelSpec(provider="openai", name="m"), **kwargs)  # type: ignore[arg-type]


def work(**kwargs: object) -> WorkItemSpec:
    return WorkItemSpec(agent="a", input="x", **kwargs)  # type: ignore[arg-type]


def test_the_agents_limits_apply_when_the_work_item_says_nothing() -> None:
    limits = run_limits(agent(max_turns=7, max_tool_calls=9, budget=Budget(max_tokens=1000)))
    assert (limits.max_turns, limits.max_tool_calls, limits.max_tokens, limits.max_cost_usd) == (7, 9, 1000, None)


def test_a_work_item_overrides_turns_and_tool_calls_either_way() -> None:
    limits = run_limits(agent(max_turns=7, max_tool_calls=9), work(max_turns=20, max_tool_calls=1))
    assert (limits.max_turns, limits.max_tool_calls) == (20, 1)


def test_budgets_only_tighten() -> None:
    spec = agent(budget=Budget(max_tokens=1000, max_cost_usd=1.0))
    assert run_limits(spec, work(budget=Budget(max_tokens=5000))).max_tokens == 1000
    assert run_limits(spec, work(budget=Budget(max_tokens=10))).max_tokens == 10
    limits = run_limits(spec, work(budget=Budget(max_cost_usd=2.0)), inherited=Budget(max_cost_usd=0.25))
    assert (limits.max_tokens, limits.max_cost_usd) == (1000, 0.25)
    assert run_limits(agent(), inherited=Budget(max_tokens=3)).max_tokens == 3


def test_cost_prices_cache_reads_and_writes_apart() -> None:
    price = Price(input_per_million_usd=3, output_per_million_usd=15, cached_input_per_million_usd=0.3,
                  cache_write_per_million_usd=3.75)
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=400_000, cache_write_tokens=100_000,
                  output_tokens=200_000)
    assert cost_usd(price, usage) == pytest.approx(500_000 * 3e-6 + 400_000 * 0.3e-6 + 100_000 * 3.75e-6 + 3.0)
    assert cost_usd(None, usage) == 0.0
    plain = Price(input_per_million_usd=1, output_per_million_usd=2)  # cache prices default to the input price
    assert cost_usd(plain, usage) == pytest.approx(1.0 + 0.4)


def test_cost_never_counts_more_cached_tokens_than_input() -> None:
    price = Price(input_per_million_usd=1, output_per_million_usd=1, cached_input_per_million_usd=0)
    assert cost_usd(price, Usage(input_tokens=10, cached_input_tokens=50, cache_write_tokens=50)) == 0.0


def test_a_run_at_its_budget_stops_with_a_distinct_code() -> None:
    limits = RunLimits(max_turns=5, max_tool_calls=5, tool_timeout_s=1, max_tokens=100, max_cost_usd=0.5)
    assert over_budget(limits, Usage(input_tokens=60, output_tokens=39)) is None
    stop = over_budget(limits, Usage(input_tokens=60, output_tokens=40))
    assert stop is not None and stop.code == ErrorCode.BUDGET_EXCEEDED and "100 of maxTokens 100" in stop.reason
    spent = over_budget(limits, Usage(cost_usd=0.3, delegated_cost_usd=0.2))  # children count against it
    assert spent is not None and "maxCostUsd" in spent.reason
    assert over_budget(limits, Usage(delegated_tokens=100)) is not None


def test_the_next_calls_output_is_capped_by_what_the_budget_has_left() -> None:
    limits = RunLimits(max_turns=5, max_tool_calls=5, tool_timeout_s=1, max_tokens=100)
    assert output_cap(limits, Usage(input_tokens=70), None) == 30
    assert output_cap(limits, Usage(input_tokens=70), 10) == 10
    assert output_cap(limits, Usage(input_tokens=200), None) == 1
    assert output_cap(RunLimits(max_turns=1, max_tool_calls=1, tool_timeout_s=1), Usage(), 512) == 512


def test_a_child_gets_what_the_parent_has_left() -> None:
    limits = RunLimits(max_turns=5, max_tool_calls=5, tool_timeout_s=1, max_tokens=100, max_cost_usd=1.0)
    left = remaining_budget(limits, Usage(input_tokens=40, cost_usd=0.25, delegated_tokens=10))
    assert left == Budget(max_tokens=50, max_cost_usd=0.75)
    assert remaining_budget(RunLimits(max_turns=1, max_tool_calls=1, tool_timeout_s=1), Usage()) is None


@pytest.mark.parametrize(("limit", "made", "asked", "allowed"),
                         [(5, 0, 3, 3), (5, 4, 3, 1), (5, 5, 3, 0), (5, 9, 1, 0)])
def test_tool_calls_beyond_the_limit_are_refused(limit: int, made: int, asked: int, allowed: int) -> None:
    limits = RunLimits(max_turns=5, max_tool_calls=limit, tool_timeout_s=1)
    assert tool_calls_allowed(limits, made, asked) == allowed

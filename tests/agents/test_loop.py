"""The agent loop: model -> tool calls -> results -> model, until an answer, bounded by turns, tool calls, tokens
and cost; every bad thing a model or a tool can do becomes an error result the model sees, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from station_runtime.contract.messages import ErrorCode
from station_runtime.contract.specs import Budget, WorkItemSpec
from station_runtime.executors import AgentFailure, Execution, Outcome, Progress, load_executor
from station_runtime.modelsim import ModelSim, Step
from tests.support import agent_tools
from tests.support.agents_llm import calls, definition, llm_agent, script

TOOLS = [{"function": f"tests.support.agent_tools:{n}"} for n in ("add", "weather", "explode", "sleepy", "huge")]


async def run(sim: ModelSim, provider: str, name: str, *, text: str = "go", work: WorkItemSpec | None = None,
              progress: list[Progress] | None = None, **spec: Any) -> Outcome:
    spec.setdefault("tools", TOOLS)
    ex = await load_executor(definition(llm_agent(sim, provider, name, **spec)))

    async def report(p: Progress) -> None:
        if progress is not None:
            progress.append(p)

    try:
        return await ex.run(Execution(input=text, progress=report, work=work))
    finally:
        await ex.aclose()


def tool_messages(sim: ModelSim, provider: str, request: int = -1) -> list[dict[str, Any]]:
    """The tool results the model was sent in a request, provider-neutral: ``{"id", "text", "error"}``."""
    body = sim.requests[request].body
    if provider == "openai":
        return [{"id": m["tool_call_id"], "text": m["content"], "error": m["content"].startswith("error:")}
                for m in body["messages"] if m["role"] == "tool"]
    found = []
    for m in body["messages"]:
        if m["role"] == "user" and isinstance(m["content"], list):
            for block in m["content"]:
                if block.get("type") == "tool_result":
                    content = block["content"]
                    text = content if isinstance(content, str) else "".join(c["text"] for c in content)
                    found.append({"id": block["tool_use_id"], "text": text, "error": bool(block.get("is_error"))})
    return found


def offered(sim: ModelSim, request: int) -> list[str]:
    tools = sim.requests[request].body.get("tools") or []
    return sorted(t["function"]["name"] if "function" in t else t["name"] for t in tools)


async def test_tools_are_called_and_their_results_reach_the_model(sim: ModelSim, provider: str) -> None:
    agent_tools.CALLS.clear()
    name = script(sim, "adder", calls(("add", {"a": 2, "b": 3}), ("weather", {"city": "Oslo"})),
                  "The tools said: {tool_results}")
    seen: list[Progress] = []
    outcome = await run(sim, provider, name, progress=seen)
    assert sorted(agent_tools.CALLS) == ["add(2,3)", "weather(Oslo)"]
    results = tool_messages(sim, provider)
    assert [r["text"] for r in results] == ["5", json.dumps({"city": "Oslo", "sky": "clear", "celsius": 21})]
    assert outcome.output == "The tools said: " + "\n".join(r["text"] for r in results)
    assert offered(sim, 0) == ["add", "explode", "huge", "sleepy", "weather"]
    assert outcome.usage.model_calls == 2 and outcome.usage.tool_calls == 2
    assert [p.turn for p in seen if p.message.startswith("turn")] == [1, 2]
    assert {p.tool for p in seen if p.tool} == {"add", "weather"}


@pytest.mark.parametrize(("call", "said"), [
    (("nope", {}), "there is no tool named 'nope'"),
    (("add", {"a": "two", "b": 3}), "do not match add's schema"),
    (("add", '{"a": 1,'), "not valid JSON"),
    (("explode", {}), "RuntimeError: the tool blew up"),
])
async def test_a_bad_call_becomes_an_error_the_model_sees(sim: ModelSim, provider: str, call: tuple[str, Any],
                                                          said: str) -> None:
    name = script(sim, "clumsy", calls(call), "recovered")
    outcome = await run(sim, provider, name)
    assert outcome.output == "recovered"
    [result] = tool_messages(sim, provider)
    # Both providers' streams are read raw: a broken stream of a tool's input JSON is the same error on both
    # (the Anthropic SDK's own stream parsed it partially, {"a": 1}, and the tool saw a different error).
    assert result["error"] and said in result["text"]


async def test_a_hanging_tool_is_cut_at_its_timeout(sim: ModelSim, provider: str) -> None:
    name = script(sim, "patient", calls(("sleepy", {"seconds": 30})), "gave up waiting")
    outcome = await run(sim, provider, name, tool_timeout_seconds=0.2)
    assert outcome.output == "gave up waiting"
    [result] = tool_messages(sim, provider)
    assert result["error"] and "did not answer within 0.2s" in result["text"]


async def test_a_huge_result_is_cut_with_a_note(sim: ModelSim, provider: str) -> None:
    name = script(sim, "greedy", calls(("huge", {"size": 100_000})), "ok")
    await run(sim, provider, name)
    [result] = tool_messages(sim, provider)
    assert len(result["text"]) < 32_100 and "[truncated: 68000 more characters]" in result["text"]


async def test_max_turns_stops_a_model_that_never_answers(sim: ModelSim, provider: str) -> None:
    name = script(sim, "looper", calls(("add", {"a": 1, "b": 1})))  # the last step repeats for ever
    with pytest.raises(AgentFailure, match="no final answer within maxTurns 3") as exc:
        await run(sim, provider, name, max_turns=3)
    assert exc.value.code == ErrorCode.LIMIT_EXCEEDED
    assert exc.value.usage is not None and exc.value.usage.model_calls == 3
    assert len(sim.requests) == 3


async def test_max_tool_calls_refuses_the_excess_and_withdraws_the_tools(sim: ModelSim, provider: str) -> None:
    three = calls(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2}), ("add", {"a": 3, "b": 3}))
    name = script(sim, "eager", three, "final")
    outcome = await run(sim, provider, name, max_tool_calls=2)
    assert outcome.output == "final" and outcome.usage.tool_calls == 2
    results = tool_messages(sim, provider)
    assert [r["error"] for r in results] == [False, False, True]
    assert "tool call limit (2) is reached" in results[2]["text"]
    assert offered(sim, 1) == []  # the model must answer now


async def test_a_work_item_overrides_the_agents_limits(sim: ModelSim, provider: str) -> None:
    name = script(sim, "looper2", calls(("add", {"a": 1, "b": 1})))
    with pytest.raises(AgentFailure, match="maxTurns 2"):
        await run(sim, provider, name, max_turns=8, work=WorkItemSpec(agent="assistant", input="go", max_turns=2))


async def test_a_token_budget_stops_the_run_before_the_next_call(sim: ModelSim, provider: str) -> None:
    name = script(sim, "spender", Step(tool_calls=calls(("add", {"a": 1, "b": 1})).tool_calls, input_tokens=600,
                                       output_tokens=500))
    with pytest.raises(AgentFailure, match="token budget reached: 2200 of maxTokens 2000") as exc:
        await run(sim, provider, name, budget={"maxTokens": 2000})
    assert exc.value.code == ErrorCode.BUDGET_EXCEEDED and not exc.value.code.retryable
    assert len(sim.requests) == 2  # stopped before the third call, not after it
    # The output cap of each call is lowered to what the budget has left.
    assert sim.requests[1].body["max_tokens"] == 900


async def test_a_cost_budget_from_the_work_item_tightens_the_agents(sim: ModelSim, provider: str) -> None:
    name = script(sim, "pricey", Step(tool_calls=calls(("add", {"a": 1, "b": 1})).tool_calls,
                                      input_tokens=100_000, output_tokens=10_000))
    price = {"inputPerMillionUsd": 1, "outputPerMillionUsd": 10}  # one call: $0.10 + $0.10
    work = WorkItemSpec(agent="assistant", input="go", budget=Budget(max_cost_usd=0.5))
    with pytest.raises(AgentFailure, match=r"cost budget reached: \$0.6000 of maxCostUsd \$0.5") as exc:
        await run(sim, provider, name, model={"price": price}, budget={"maxCostUsd": 5}, work=work)
    assert exc.value.usage is not None and exc.value.usage.cost_usd == pytest.approx(0.6)


async def test_an_output_schema_gives_a_json_answer_or_a_clear_failure(sim: ModelSim, provider: str) -> None:
    schema = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}
    good = script(sim, "json-good", '```json\n{"sum": 5}\n```')
    outcome = await run(sim, provider, good, tools=[], output_schema=schema)
    assert outcome.output == {"sum": 5}
    if provider == "openai":
        assert sim.requests[-1].body["response_format"]["json_schema"]["schema"] == schema
    bad = script(sim, "json-bad", '{"sum": "five"}')
    with pytest.raises(AgentFailure, match="does not match outputSchema: sum: 'five' is not of type 'integer'"):
        await run(sim, provider, bad, tools=[], output_schema=schema)


async def test_tool_calls_of_one_turn_run_concurrently(sim: ModelSim, provider: str) -> None:
    name = script(sim, "parallel", calls(*[("sleepy", {"seconds": 0.3})] * 4), "done")
    import time

    started = time.monotonic()
    outcome = await run(sim, provider, name)
    assert outcome.output == "done"
    assert time.monotonic() - started < 1.0  # four 0.3 s calls, together

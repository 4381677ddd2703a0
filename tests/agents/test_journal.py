"""The journal as the loop sees it: what a run appends, and a run cut short anywhere resumed from its entries
without asking the model a finished turn again or running a finished call again, and sending the model exactly
the conversation the uninterrupted run sent. The journal here is a list (the loop's side is pure); the store in
JetStream is tested with real stations (test_durable_runs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from station_runtime.contract.messages import ErrorCode, JournalEntry, JournalKind, Usage
from station_runtime.executors import AgentFailure, Execution, Outcome, load_executor
from station_runtime.executors.conversation import Message
from station_runtime.executors.journal import JournalBroken, replay
from station_runtime.modelsim import ModelSim, Step, ToolCallStep
from tests.support import agent_tools
from tests.support.agents_llm import calls, definition, llm_agent, script

TOOLS = [{"function": "tests.support.agent_tools:add"}, {"function": "tests.support.agent_tools:weather"}]


class ListJournal:
    """A run's journal kept in a list: what the loop appended, and what a later attempt found."""

    def __init__(self, found: Sequence[JournalEntry] = ()) -> None:
        self.found = list(found)
        self.appended: list[JournalEntry] = []

    @property
    def entries(self) -> Sequence[JournalEntry]:
        return self.found

    async def append(self, kind: JournalKind, **fields: Any) -> JournalEntry:
        entry = JournalEntry(work_id="w1", n=len(self.found) + len(self.appended) + 1, kind=kind, attempt=1,
                             **fields)
        self.appended.append(entry)
        return entry


async def run(sim: ModelSim, provider: str, name: str, journal: ListJournal, **spec: Any) -> Outcome:
    spec.setdefault("tools", TOOLS)
    ex = await load_executor(definition(llm_agent(sim, provider, name, **spec)))
    try:
        return await ex.run(Execution(input="go", request_id="w1", journal=journal))
    finally:
        await ex.aclose()


def three_turns(sim: ModelSim) -> str:
    # Call ids fixed: a turn the model is asked again answers with the same ids (a real model would not; the
    # comparison of what was sent needs them equal).
    return script(sim, "three", Step(tool_calls=(ToolCallStep("add", {"a": 1, "b": 2}, id="t1a"),
                                                 ToolCallStep("weather", {"city": "Oslo"}, id="t1b"))),
                  Step(tool_calls=(ToolCallStep("add", {"a": 3, "b": 4}, id="t2a"),)), "sum and sky: {tool_results}")


async def test_a_run_journals_each_turn_and_each_call_before_it_acts(sim: ModelSim, provider: str) -> None:
    journal = ListJournal()
    out = await run(sim, provider, three_turns(sim), journal)
    kinds = [(e.kind.value, e.turn) for e in journal.appended]
    # One entry per answer (with the calls it starts) and one per result: no entry of its own before a call.
    assert kinds == [("turn", 1), ("result", 1), ("result", 1), ("turn", 2), ("result", 2), ("turn", 3)]
    turn1 = journal.appended[0]
    assert turn1.started == ["t1a", "t1b"] and turn1.tool_calls[0].arguments == {"a": 1, "b": 2}
    results = [e for e in journal.appended if e.kind == JournalKind.RESULT]
    assert sorted((r.call_index, r.key) for r in results) == [(1, "w1/1"), (2, "w1/2"), (3, "w1/3")]
    assert sorted(r.text for r in results) == ["3", "7", '{"city": "Oslo", "sky": "clear", "celsius": 21}']
    turns = [e for e in journal.appended if e.kind == JournalKind.TURN]
    assert [t.messages for t in turns] == [1, 4, 6]  # the request by reference: how much of the conversation
    assert all(t.usage and t.usage.model_calls == 1 for t in turns)
    assert out.usage.model_calls == 3 and out.usage.tool_calls == 3


@pytest.mark.parametrize("cut", range(1, 6))
async def test_a_run_cut_anywhere_resumes_without_repeating_a_turn_or_a_call(
        sim: ModelSim, provider: str, cut: int) -> None:
    whole = ListJournal()
    expected = await run(sim, provider, three_turns(sim), whole)
    sent = [r.body for r in sim.requests]
    assert len(whole.appended) == 6 and len(sent) == 3
    found = whole.appended[:cut]
    sim.requests.clear()
    agent_tools.CALLS.clear()
    again = ListJournal(found)
    out = await run(sim, provider, "three", again, tools=[{**t, "unknownOutcome": "retry"} for t in TOOLS])
    assert out.output == expected.output
    assert out.usage.model_calls == 3 and out.usage.tool_calls == 3
    turns_done = sum(1 for e in found if e.kind == JournalKind.TURN)
    # The model is asked only what the journal has no answer to, with exactly what the whole run sent then.
    assert [r.body for r in sim.requests] == sent[turns_done:]
    # A call runs again only if it has no answer (it started: by its policy, here retry; tested below).
    answered = {e.call_id for e in found if e.kind == JournalKind.RESULT}
    assert len(agent_tools.CALLS) == 3 - len(answered)


async def test_a_started_call_with_no_answer_stops_the_run_unless_its_tool_may_retry(
        sim: ModelSim, provider: str) -> None:
    whole = ListJournal()
    await run(sim, provider, three_turns(sim), whole)
    found = whole.appended[:1]  # turn 1, whose calls started
    with pytest.raises(AgentFailure) as exc:
        await run(sim, provider, "three", ListJournal(found))
    assert exc.value.code == ErrorCode.UNKNOWN_OUTCOME and "w1/1" in str(exc.value)
    agent_tools.CALLS.clear()
    retrying = [{**t, "unknownOutcome": "retry"} for t in TOOLS]
    out = await run(sim, provider, "three", ListJournal(found), tools=retrying)
    assert out.usage.tool_calls == 3 and agent_tools.CALLS == ["add(1,2)", "weather(Oslo)", "add(3,4)"]


async def test_a_journalled_answer_is_the_outcome_without_a_model_call(sim: ModelSim, provider: str) -> None:
    whole = ListJournal()
    expected = await run(sim, provider, three_turns(sim), whole)
    sim.requests.clear()
    out = await run(sim, provider, "three", ListJournal(whole.appended))
    assert out.output == expected.output and out.usage == expected.usage and sim.requests == []


async def test_calls_past_the_limit_are_journalled_as_refused_and_replayed_so(sim: ModelSim) -> None:
    name = script(sim, "greedy", calls(("add", {"a": 1, "b": 1}), ("add", {"a": 2, "b": 2})), "{tool_results}")
    whole = ListJournal()
    expected = await run(sim, "openai", name, whole, max_tool_calls=1)
    refused = [e for e in whole.appended if e.kind == JournalKind.RESULT and e.is_error]
    assert len(refused) == 1 and "limit" in refused[0].text
    sim.requests.clear()
    out = await run(sim, "openai", name, ListJournal(whole.appended[:-1]), max_tool_calls=1)
    assert out.output == expected.output and out.usage.tool_calls == 1


def _entry(n: int, kind: JournalKind, **fields: Any) -> JournalEntry:
    return JournalEntry(work_id="w1", n=n, kind=kind, **fields)


def test_replay_refuses_a_journal_with_a_gap_or_a_turn_after_unanswered_calls() -> None:
    first = Message("user", text="go")
    call = {"tool_calls": [{"id": "c1", "name": "add", "arguments": {}}]}
    with pytest.raises(JournalBroken, match="entry 3 where 2 belongs"):
        replay([_entry(1, JournalKind.TURN, turn=1, **call), _entry(3, JournalKind.TURN, turn=2)], first)
    with pytest.raises(JournalBroken, match="did not all answer"):
        replay([_entry(1, JournalKind.TURN, turn=1, **call), _entry(2, JournalKind.TURN, turn=2)], first)
    assert JournalBroken("x").code == ErrorCode.UNKNOWN_OUTCOME


def test_replay_restores_spend_children_and_where_the_calls_stand() -> None:
    spent = Usage(input_tokens=10, output_tokens=2, model_calls=1)
    child = Usage(delegated_tokens=5)
    entries = [
        _entry(1, JournalKind.TURN, turn=1, usage=spent, tool_calls=[{"id": "a", "name": "lattice_submit",
                                                                     "arguments": {}}]),
        _entry(2, JournalKind.CALL, turn=1, call_id="a", call_index=1),
        _entry(3, JournalKind.RESULT, turn=1, call_id="a", call_index=1, text="{}", child="w1-d1", delegated=child),
        _entry(4, JournalKind.ATTEMPT, attempt=2, resumed_at=3),
        _entry(5, JournalKind.TURN, turn=2, usage=spent, tool_calls=[{"id": "b", "name": "x", "arguments": {}},
                                                                     {"id": "c", "name": "y", "arguments": {}}]),
        _entry(6, JournalKind.CALL, turn=2, call_id="b", call_index=2),
    ]
    done = replay(entries, Message("user", text="go"))
    assert done.turns == 2 and done.state.children == ["w1-d1"] and done.answer is None
    assert done.state.usage == spent + spent + Usage(tool_calls=1) + child
    assert (done.state.tool_calls, done.state.calls_seen) == (1, 1)
    assert done.last is not None and done.last.started == {"b"} and not done.last.results
    assert [m.role for m in done.state.messages] == ["user", "assistant", "tool", "assistant"]

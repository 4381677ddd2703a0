"""Delegation through the lattice: a parent agent on one station hands work to two children that only other
stations host, awaits them and combines their answers; the children record their parent, the parent its
children, and the children's usage is rolled up into the parent's."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase
from station_runtime.contract.selectors import parse_selector
from station_runtime.contract.specs import Budget, WorkItemSpec
from station_runtime.executors.tools.lattice import child_of
from station_runtime.modelsim import ModelSim, Step, ToolCallStep
from station_runtime.work.controller import WorkController
from tests.support.agents_llm import llm_agent, script
from tests.support.cli import lattice
from tests.support.lattice import StationProcess, running_station
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)


async def _submitted(client: LatticeClient, work_id: str) -> bool:
    return any([e async for e in client.events(category="work", work_id=work_id)
                if e.short_type == "work.submitted"])


def planner_script(sim: ModelSim, parent: str) -> str:
    research = ToolCallStep("lattice_submit", {"agent": "researcher", "input": "find facts"}, id="call_r")
    write = ToolCallStep("lattice_submit", {"agent": "writer", "input": "write it up"}, id="call_w")
    children = [child_of(parent, 1), child_of(parent, 2)]
    wait = ToolCallStep("lattice_await", {"work_ids": children}, id="call_a")
    return script(sim, "planner", Step(tool_calls=(research, write)), Step(tool_calls=(wait,)),
                  "combined: {tool_results}")


async def test_a_parent_on_one_station_delegates_to_children_on_two_others(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, provider: str) -> None:
    parent_id = f"plan-{provider}"
    planner = planner_script(sim, parent_id)
    script(sim, "researcher-model", Step(text="facts: 3", input_tokens=100, output_tokens=10))
    script(sim, "writer-model", Step(text="prose", input_tokens=200, output_tokens=20))
    await client.put_agent(llm_agent(sim, provider, planner, "planner", labels={"role": "plan"},
                                     tools=[{"lattice": ["submit", "await"], "delegateTo": ["researcher", "writer"]}]))
    await client.put_agent(llm_agent(sim, provider, "researcher-model", "researcher", labels={"role": "research"}))
    await client.put_agent(llm_agent(sim, provider, "writer-model", "writer", labels={"role": "write"}))
    async with WorkController(await client.org_work(), interval_s=0.5), \
            running_station(nats_url, org, "s-plan", agent_selector=parse_selector("role=plan")), \
            running_station(nats_url, org, "s-research", agent_selector=parse_selector("role=research")), \
            running_station(nats_url, org, "s-write", agent_selector=parse_selector("role=write")):
        for agent in ("planner", "researcher", "writer"):
            await client.wait_for_stations(1, agent=agent, timeout_s=20)
        await client.submit(WorkItemSpec(agent="planner", input="plan it", budget=Budget(max_tokens=100_000)),
                            work_id=parent_id, watch=True)
        parent = await client.wait_work(parent_id, timeout_s=60)
        assert parent.phase == WorkPhase.SUCCEEDED, parent.error
        results = json.loads(str(parent.result).removeprefix("combined: "))
        assert [(r["phase"], r["result"]) for r in results] == [("Succeeded", "facts: 3"), ("Succeeded", "prose")]
        children = [await client.get_work(c) for c in (child_of(parent_id, 1), child_of(parent_id, 2))]
        assert [c.station_id for c in children if c] == ["s-research", "s-write"]
        assert all(c and c.parent_id == parent_id and c.depth == 1 for c in children)
        assert sorted(parent.children) == sorted(c.work_id for c in children if c)
        # The children inherit what is left of the parent's budget, and their spend is the parent's too.
        assert all(c and c.spec.budget and c.spec.budget.max_tokens and c.spec.budget.max_tokens < 100_000
                   for c in children)
        assert parent.usage is not None and parent.usage.tool_calls == 3 and parent.usage.model_calls == 3
        assert parent.usage.delegated_tokens == 330

        shown = await lattice("--nats", nats_url, "--org", org, "work", "get", parent_id)
        assert shown.code == 0, shown.stderr
        assert "Children" in shown.stdout and all(c.work_id in shown.stdout for c in children if c), shown.stdout
        assert "3 model calls, 3 tool calls; children: 330 tokens" in shown.stdout, shown.stdout
        finished = [e async for e in client.events(category="work", work_id=parent_id)
                    if e.short_type == "work.succeeded"]
        assert finished and sorted(finished[0].data["children"]) == sorted(parent.children)
        assert finished[0].data["usage"]["delegated_tokens"] == 330
        child_events = [e async for e in client.events(category="work", work_id=children[0].work_id)]  # type: ignore[union-attr]
        assert child_events and all(e.data.get("parent") == parent_id for e in child_events)
        child_shown = await lattice("--nats", nats_url, "--org", org, "work", "get", children[0].work_id)  # type: ignore[union-attr]
        assert parent_id in child_shown.stdout, child_shown.stdout


async def test_delegation_past_the_depth_limit_is_refused_to_the_model(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim) -> None:
    # An agent that delegates to itself: depth 1 runs, depth 2 is past maxDelegationDepth 1 and refused.
    again = ToolCallStep("lattice_invoke", {"agent": "recurse", "input": "deeper"})
    script(sim, "recurser", Step(tool_calls=(again,)), "done: {tool_results}")
    await client.put_agent(llm_agent(sim, "openai", "recurser", "recurse", max_delegation_depth=1,
                                     tools=[{"lattice": ["invoke"]}]))
    async with WorkController(await client.org_work(), interval_s=0.5), running_station(nats_url, org, "s1"), \
            running_station(nats_url, org, "s2"):
        await client.wait_for_stations(2, agent="recurse", timeout_s=20)
        reply = await client.invoke("go", agent="recurse", timeout_s=30)
    assert "delegation depth limit reached (1 levels)" in str(reply.output)


@pytest.mark.fault
async def test_a_parent_killed_between_its_two_children_leaves_exactly_two(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, tmp_path: Path) -> None:
    # The planner submits child A, then (slowly: the model streams its second turn) child B. Its station is
    # SIGKILLed after A exists and before B: the witness requeues the run, another station runs it again, and
    # the child ids (parent id + the model's call id) make A's second submission the same work, not a second A.
    parent_id = "plan-killed"
    first = ToolCallStep("lattice_submit", {"agent": "researcher", "input": "A"}, id="call_a")
    second = ToolCallStep("lattice_submit", {"agent": "researcher", "input": "B"}, id="call_b")
    wait = ToolCallStep("lattice_await", {"work_ids": [child_of(parent_id, 1), child_of(parent_id, 2)]},
                        id="call_w")
    script(sim, "slow-planner", Step(tool_calls=(first,)),
           Step(text=" ".join(["thinking"] * 12), tool_calls=(second,)), Step(tool_calls=(wait,)), "both done",
           tokens_per_s=4)
    script(sim, "researcher-model", "found it")
    await client.put_agent(llm_agent(sim, "openai", "slow-planner", "planner", labels={"role": "plan"},
                                     tools=[{"lattice": ["submit", "await"], "delegateTo": ["researcher"]}]))
    await client.put_agent(llm_agent(sim, "openai", "researcher-model", "researcher", labels={"role": "research"}))
    env = {"TEST_MODEL_KEY": "sk-test-0123456789abcdef"}
    doomed = StationProcess(nats_url, org, "s-plan-1", tmp_path, "--agent-selector", "role=plan", env=env).start()
    spare: StationProcess | None = None
    try:
        async with WorkController(await client.org_work(), interval_s=0.2), \
                running_station(nats_url, org, "s-research", agent_selector=parse_selector("role=research")):
            await client.wait_for_stations(1, agent="planner", timeout_s=30)
            await client.submit(WorkItemSpec(agent="planner", input="plan it", max_retries=2), work_id=parent_id)
            # Child A exists and its submission is recorded (the event follows the record: a kill between the two
            # would lose the event, not the child).
            await eventually(lambda: _submitted(client, child_of(parent_id, 1)), timeout_s=30,
                             what="child A submitted")
            assert await client.get_work(child_of(parent_id, 2)) is None  # the kill comes between the two
            doomed.signal(signal.SIGKILL)
            await doomed.wait(10)
            spare = StationProcess(nats_url, org, "s-plan-2", tmp_path, "--agent-selector", "role=plan",
                                   env=env).start()
            parent = await client.wait_work(parent_id, timeout_s=90)
        assert parent.phase == WorkPhase.SUCCEEDED, parent.reason
        assert parent.attempt == 2 and parent.station_id == "s-plan-2"
        children = [r for r in await client.list_work() if r.parent_id == parent_id]
        assert sorted(c.work_id for c in children) == sorted([child_of(parent_id, 1),
                                                             child_of(parent_id, 2)])
        submitted = [e async for e in client.events(category="work")
                     if e.short_type == "work.submitted" and e.data.get("parent") == parent_id]
        assert len(submitted) == 2  # child A was created once, by the first attempt
    finally:
        doomed.stop()
        if spare is not None:
            spare.stop()

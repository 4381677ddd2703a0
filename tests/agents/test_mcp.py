"""MCP tool servers through the official SDK: real servers (tests/support/mcp_tools_server.py) over stdio and
streamable HTTP; tools discovered when the agent loads, an allow-list, headers from the environment, a server that
is down or goes away, and a call that failed never sent again."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from station_runtime.contract.messages import ErrorCode
from station_runtime.contract.specs import McpServerSpec
from station_runtime.executors import AgentFailure, Execution, Outcome, load_executor
from station_runtime.executors.agent import AgentExecutor
from station_runtime.executors.conversation import ToolCall
from station_runtime.executors.tools.base import ToolContext
from station_runtime.modelsim import ModelSim
from tests.support import mcp_tools_server
from tests.support.agents_llm import calls, definition, llm_agent, script

pytestmark = pytest.mark.timeout(60)

SERVER = str(Path(mcp_tools_server.__file__).resolve())
ALL_TOOLS = ["add", "counter", "die", "echo", "fail", "huge", "keyed", "noop", "slow"]


def stdio(**kwargs: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [SERVER], **kwargs}


async def run(sim: ModelSim, name: str, tools: list[dict[str, Any]], *, provider: str = "openai",
              servers: dict[str, McpServerSpec] | None = None, **spec: Any) -> Outcome:
    agent = llm_agent(sim, provider, name, tools=tools, **spec)
    ex = await load_executor(definition(agent, tool_servers=servers or {}))
    try:
        return await ex.run(Execution(input="go"))
    finally:
        await ex.aclose()


def results(sim: ModelSim, request: int = -1) -> list[str]:
    return [m["content"] for m in sim.requests[request].body["messages"] if m["role"] == "tool"]


def offered(sim: ModelSim, request: int = 0) -> list[str]:
    return sorted(t["function"]["name"] for t in sim.requests[request].body.get("tools") or [])


async def test_a_stdio_servers_tools_are_discovered_and_called(sim: ModelSim, provider: str) -> None:
    name = script(sim, "mcp-add", calls(("add", {"a": 2, "b": 3}), ("echo", {"text": "hi"})), "done")
    agent = llm_agent(sim, provider, name, tools=[{"mcp": stdio()}])
    ex = await load_executor(definition(agent))
    try:
        assert sorted(ex.tool_names()) == [f"mcp:{n}" for n in ALL_TOOLS]  # type: ignore[attr-defined]
        outcome = await ex.run(Execution(input="go"))
    finally:
        await ex.aclose()
    assert outcome.output == "done"
    assert outcome.usage.tool_calls == 2
    body = sim.requests[-1].body
    if provider == "openai":
        assert sorted(results(sim)) == ["5", "hi"]
    else:
        texts = [b["content"] for m in body["messages"] if isinstance(m["content"], list)
                 for b in m["content"] if b.get("type") == "tool_result"]
        assert sorted(t if isinstance(t, str) else "".join(c["text"] for c in t) for t in texts) == ["5", "hi"]


async def test_a_call_carries_its_idempotency_key_in_meta(sim: ModelSim) -> None:
    name = script(sim, "mcp-keyed", calls(("keyed", {}), ("keyed", {})), "{tool_results}")
    ex = await load_executor(definition(llm_agent(sim, "openai", name, tools=[{"mcp": stdio()}])))
    try:
        outcome = await ex.run(Execution(input="go", request_id="work-7"))
    finally:
        await ex.aclose()
    assert outcome.output == "work-7/1\nwork-7/2"  # one key per call: the run's id and the call's position


async def test_the_allow_list_is_all_the_model_sees(sim: ModelSim) -> None:
    name = script(sim, "mcp-allow", calls(("counter", {})), "done")
    await run(sim, name, [{"mcp": stdio(), "allow": ["add", "echo"]}])
    assert offered(sim) == ["add", "echo"]
    assert results(sim) == ["error: there is no tool named 'counter'; the tools are: add, echo"]


async def test_an_allow_list_naming_a_missing_tool_fails_the_load(sim: ModelSim) -> None:
    agent = llm_agent(sim, "openai", "echo", tools=[{"mcp": stdio(), "allow": ["add", "nope"]}])
    with pytest.raises(AgentFailure) as failure:
        await load_executor(definition(agent))
    assert failure.value.code == ErrorCode.BAD_REQUEST
    assert "has no tool 'nope'" in str(failure.value) and "add" in str(failure.value)


async def test_a_tool_server_is_referenced_by_name(sim: ModelSim) -> None:
    name = script(sim, "mcp-ref", calls(("echo", {"text": "shared"})), "done")
    shared = McpServerSpec(**stdio())
    outcome = await run(sim, name, [{"server": "tools", "allow": ["echo"]}], servers={"tools": shared})
    assert outcome.output == "done" and results(sim) == ["shared"]


async def test_an_undefined_tool_server_fails_the_load_with_what_to_do(sim: ModelSim) -> None:
    agent = llm_agent(sim, "openai", "echo", tools=[{"server": "missing"}])
    with pytest.raises(AgentFailure) as failure:
        await load_executor(definition(agent))
    assert failure.value.code == ErrorCode.BAD_REQUEST
    assert "ToolServer 'missing' is not defined" in str(failure.value) and "kind: ToolServer" in str(failure.value)


async def test_a_server_that_cannot_start_makes_the_agent_unavailable_not_a_crash(sim: ModelSim) -> None:
    agent = llm_agent(sim, "openai", "echo", tools=[{"mcp": {"command": "/nonexistent/mcp-server"}}])
    with pytest.raises(AgentFailure) as failure:
        await load_executor(definition(agent))
    assert failure.value.code == ErrorCode.MODEL_UNAVAILABLE
    assert "tool server unavailable" in str(failure.value) and "/nonexistent/mcp-server" in str(failure.value)


async def test_http_headers_come_from_the_environment(sim: ModelSim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_TOKEN", "Bearer t0ken")
    name = script(sim, "mcp-http", calls(("add", {"a": 20, "b": 22})), "done")
    async with mcp_tools_server.serve_http(require_header=("Authorization", "Bearer t0ken")) as url:
        server = {"url": url, "headers": {"Authorization": {"fromEnv": "MCP_TOKEN"}}}
        outcome = await run(sim, name, [{"mcp": server, "allow": ["add"]}])
    assert outcome.output == "done" and results(sim) == ["42"]


async def test_a_refused_http_server_makes_the_agent_unavailable(sim: ModelSim) -> None:
    async with mcp_tools_server.serve_http(require_header=("Authorization", "Bearer t0ken")) as url:
        agent = llm_agent(sim, "openai", "echo", tools=[{"mcp": {"url": url, "connectTimeoutSeconds": 10}}])
        with pytest.raises(AgentFailure) as failure:
            await load_executor(definition(agent))
    assert failure.value.code == ErrorCode.MODEL_UNAVAILABLE
    assert "tool server unavailable" in str(failure.value)
    assert "t0ken" not in str(failure.value)


async def test_a_missing_header_variable_says_which(sim: ModelSim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_TOKEN", raising=False)
    agent = llm_agent(sim, "openai", "echo", tools=[{"mcp": {"url": "http://127.0.0.1:9/mcp",
                                                             "headers": {"X-Key": {"fromEnv": "MCP_TOKEN"}}}}])
    with pytest.raises(AgentFailure) as failure:
        await load_executor(definition(agent))
    assert "header X-Key: environment variable MCP_TOKEN is not set" in str(failure.value)


async def test_tool_errors_timeouts_and_huge_results_reach_the_model(sim: ModelSim) -> None:
    name = script(sim, "mcp-bad", calls(("fail", {"message": "no such ticket"}), ("slow", {"seconds": 30}),
                                        ("huge", {"size": 200_000})), "coped")
    outcome = await run(sim, name, [{"mcp": stdio(toolTimeoutSeconds=0.5)}])
    assert outcome.output == "coped"
    failed, slow, huge = results(sim)
    assert failed.startswith("error:") and "no such ticket" in failed
    assert slow.startswith("error: slow did not answer within 0.5s")
    assert "[truncated:" in huge and len(huge) < 200_000


async def test_a_server_that_dies_mid_call_is_restarted_and_the_call_is_not_resent(
        sim: ModelSim, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    name = script(sim, "mcp-die", calls(("counter", {})), calls(("die", {})), calls(("counter", {})), "survived")
    outcome = await run(sim, name, [{"mcp": stdio(env={"MCP_TOOLS_LEDGER": str(ledger)})}])
    assert outcome.output == "survived"
    died = results(sim)[1]
    assert "went away during die" in died and "may or may not have taken effect" in died
    assert results(sim)[2] == "1"  # a new server process: its own count starts again
    assert ledger.read_text().split() == ["counter", "die", "counter"]  # die ran once: never resent


async def test_an_http_server_that_goes_away_is_reached_again_when_it_returns(sim: ModelSim) -> None:
    async with mcp_tools_server.serve_http() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        agent = llm_agent(sim, "openai", "echo", tools=[{"mcp": {"url": url, "connectTimeoutSeconds": 5}}])
        ex = await load_executor(definition(agent))
        assert isinstance(ex, AgentExecutor)
        ctx = ToolContext(execution=Execution(input="go"), call_id="c1")
        assert (await ex.tools.run(ToolCall("c1", "echo", {"text": "up"}), ctx)).text == "up"
    try:
        # the server is gone: a call says so, as an error the model reads, and is not retried
        lost = await ex.tools.run(ToolCall("c2", "echo", {"text": "lost"}), ctx)
        assert lost.is_error and "tool server mcp" in lost.text, lost.text
        async with mcp_tools_server.serve_http(port=port):  # back on its port: the next call reconnects
            back = await ex.tools.run(ToolCall("c3", "echo", {"text": "back"}), ctx)
        assert (back.text, back.is_error) == ("back", False)
    finally:
        await ex.aclose()

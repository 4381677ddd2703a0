"""ToolServers through an embedded lattice: declared once by `lattice apply`, carried to the stations inside the
agents that name them, their tools discovered and listed by `lattice get agents -o wide`; a changed ToolServer
reaches its agents, a deleted one leaves them not ready with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from station_runtime.api.models import ObjectMeta, ToolServer
from station_runtime.client import LatticeClient
from station_runtime.contract.specs import ToolServerSpec
from station_runtime.modelsim import ModelSim
from tests.support import mcp_tools_server
from tests.support.agents_llm import calls, script
from tests.support.cli import lattice
from tests.support.lattice import running_station
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

SERVER = str(Path(mcp_tools_server.__file__).resolve())


def manifests(sim: ModelSim, model: str, allow: list[str]) -> str:
    return f"""\
apiVersion: lattice.station.dev/v1alpha1
kind: ToolServer
metadata: {{name: calc}}
spec:
  command: {json.dumps(sys.executable)}
  args: [{json.dumps(SERVER)}]
---
apiVersion: lattice.station.dev/v1alpha1
kind: Agent
metadata: {{name: mathbot}}
spec:
  model: {{provider: openai, name: {model}, baseUrl: "{sim.openai_base_url}", apiKeyEnv: TEST_MODEL_KEY}}
  tools: [{{server: calc, allow: {json.dumps(allow)}}}]
"""


async def test_a_tool_server_applied_once_serves_its_agents_tools(client: LatticeClient, nats_url: str, org: str,
                                                                  sim: ModelSim, tmp_path: Path) -> None:
    model = script(sim, "adder", calls(("add", {"a": 40, "b": 2})), "forty-two")
    path = tmp_path / "agents.yaml"
    path.write_text(manifests(sim, model, ["add", "echo"]))
    result = await lattice("--nats", nats_url, "--org", org, "apply", "-f", str(path))
    assert result.code == 0, result.stderr
    assert "toolserver/calc configured" in result.stdout and "agent/mathbot configured" in result.stdout
    [definition] = await client.agents()
    assert definition.tool_servers["calc"].command == sys.executable

    async with running_station(nats_url, org, "s1"):
        [record] = await client.wait_for_stations(1, agent="mathbot", timeout_s=30)
        assert record.agent_tools["mathbot"] == ["calc:add", "calc:echo"]
        wide = await lattice("--nats", nats_url, "--org", org, "get", "agents", "-o", "wide")
        assert wide.code == 0 and "calc:add,calc:echo" in wide.stdout, wide.stdout
        reply = await client.invoke("what is 40 + 2?", agent="mathbot")
        assert reply.output == "forty-two" and reply.usage.tool_calls == 1
        assert [m["content"] for m in sim.requests[-1].body["messages"] if m["role"] == "tool"] == ["42"]

        # The ToolServer changes (applied alone): the agent naming it is published again and reloaded.
        revision = (await client.state()).agents
        before = (await revision.get("mathbot")).revision
        changed = ToolServer(metadata=ObjectMeta(name="calc"),
                             spec=ToolServerSpec(command=sys.executable, args=[SERVER], env={"X": "1"}))
        assert await client.put_tool_server(changed) == ["mathbot"]
        after = await revision.get("mathbot")
        assert after.revision > before

        # Deleted: the agent is published without it and its station says what is missing.
        gone = await lattice("--nats", nats_url, "--org", org, "delete", "toolserver", "calc")
        assert gone.code == 0 and "toolserver/calc deleted (agents republished without it: mathbot)" in gone.stdout
        missing = await lattice("--nats", nats_url, "--org", org, "delete", "toolserver", "calc")
        assert missing.code == 1 and "no ToolServer 'calc'" in missing.stderr

        async def not_loaded() -> str | None:
            [r] = await client.stations()
            return r.agent_errors.get("mathbot")

        error = await eventually(not_loaded, timeout_s=20, what="the station's load error for mathbot")
        assert "ToolServer 'calc' is not defined" in error
        deleted = await lattice("--nats", nats_url, "--org", org, "delete", "agent", "mathbot")
        assert deleted.code == 0 and "agent/mathbot deleted" in deleted.stdout
        assert await client.agents() == []
        bad = await lattice("--nats", nats_url, "--org", org, "delete", "agent", "no*pe")
        assert bad.code == 2 and "invalid agent name" in bad.stderr

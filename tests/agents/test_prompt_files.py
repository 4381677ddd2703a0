"""An agent from a ``.prompt`` file runs: its templates are rendered with the work's input (not HTML-escaped), its
input schema refuses an input that does not match; `lattice import prompt` prints the manifest and `lattice apply`
takes the file as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from station_runtime.api.dotprompt import parse_prompt
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import ErrorCode
from station_runtime.executors import AgentFailure, Execution, load_executor
from station_runtime.modelsim import ModelSim
from tests.support.agents_llm import definition
from tests.support.cli import lattice

pytestmark = pytest.mark.timeout(60)


def prompt_file(sim: ModelSim, provider: str) -> str:
    base = sim.openai_base_url if provider == "openai" else sim.anthropic_base_url
    return f"""\
---
model: {provider}/echo
input:
  schema:
    question: string
    audience?: string
lattice.baseUrl: "{base}"
lattice.apiKeyEnv: TEST_MODEL_KEY
---
{{{{role "system"}}}}
Answer for {{{{#if audience}}}}{{{{audience}}}}{{{{else}}}}anyone{{{{/if}}}}.
{{{{role "user"}}}}
Q: {{{{question}}}}
"""


async def test_a_prompt_files_templates_are_rendered_with_the_input(sim: ModelSim, provider: str) -> None:
    agent = parse_prompt(prompt_file(sim, provider), "asker")
    ex = await load_executor(definition(agent))
    try:
        outcome = await ex.run(Execution(input={"question": "is 1 < 2 & 3 > 2?", "audience": "kids"}))
        assert outcome.output == "Q: is 1 < 2 & 3 > 2?"  # modelsim's echo answers with the user message
        body = sim.requests[-1].body
        system = body["system"] if provider == "anthropic" else body["messages"][0]["content"]
        assert "Answer for kids." in str(system)
        with pytest.raises(AgentFailure) as failure:
            await ex.run(Execution(input={"question": 42}))
        assert failure.value.code == ErrorCode.BAD_REQUEST
        assert "question: 42 is not of type 'string'" in str(failure.value)
        # A string input that is JSON is read as its object; plain text reaches the template as {{input}}.
        assert (await ex.run(Execution(input='{"question": "why"}'))).output == "Q: why"
    finally:
        await ex.aclose()


async def test_import_prints_the_manifest_and_apply_takes_the_file(client: LatticeClient, nats_url: str,
                                                                   org: str, sim: ModelSim, tmp_path: Path) -> None:
    path = tmp_path / "asker.prompt"
    path.write_text(prompt_file(sim, "openai"))
    shown = await lattice("import", "prompt", str(path))
    assert shown.code == 0, shown.stderr
    [doc] = list(yaml.safe_load_all(shown.stdout))
    assert doc["kind"] == "Agent" and doc["metadata"]["name"] == "asker"
    assert doc["spec"]["promptTemplate"] == "Q: {{question}}" and doc["spec"]["model"]["name"] == "echo"
    applied = await lattice("--nats", nats_url, "--org", org, "apply", "-f", str(path))
    assert applied.code == 0 and "agent/asker configured" in applied.stdout, applied.stderr
    assert [a.spec.prompt_template for a in await client.agents()] == ["Q: {{question}}"]

    bad = tmp_path / "bad.prompt"
    bad.write_text("---\nmodel: mistral/large\ntemprature: 1\n---\nhi\n")
    refused = await lattice("import", "prompt", str(bad))
    assert refused.code == 2
    assert "bad.prompt model: provider 'mistral' is not supported" in refused.stderr
    assert "bad.prompt temprature: unknown key" in refused.stderr

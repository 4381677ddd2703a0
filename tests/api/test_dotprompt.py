"""``.prompt`` files (Dotprompt) as Agents: the mapping, Picoschema, and a clear problem per key that cannot map."""

from __future__ import annotations

from pathlib import Path

import pytest

from station_runtime.api.dotprompt import PromptError, parse_prompt, picoschema
from station_runtime.api.loader import ManifestError, load_manifests

pytestmark = pytest.mark.timeout(10)

FULL = """\
---
model: anthropic/claude-sonnet-4-5
description: Answers about the docs.
config: {temperature: 0.3, maxOutputTokens: 300, topK: 5, stopSequences: ["END"], seed: 7}
input:
  schema:
    question: string, the question
    level?(enum): [basic, expert]
output:
  format: json
  schema:
    answer: string
    sources(array, where it came from): string
tools: [docs, wiki/search, wiki/read, lattice/submit, lattice/await, "pkg.mod:fn", {mcp: {command: mcp-x}}]
lattice.maxTurns: 4
lattice.budget: {maxCostUsd: 0.5}
lattice.price: {inputPerMillionUsd: 3, outputPerMillionUsd: 15}
lattice.labels: {team: docs}
---
{{role "system"}}
You answer {{level}} questions.
{{role "user"}}
{{question}}
"""


def test_a_full_prompt_file_maps_to_an_agent() -> None:
    agent = parse_prompt(FULL, "ask-docs")
    spec, model = agent.spec, agent.spec.model
    assert agent.name == "ask-docs" and agent.metadata.labels == {"team": "docs"}
    assert (model.provider, model.name, model.temperature, model.max_tokens) == ("anthropic", "claude-sonnet-4-5",
                                                                                 0.3, 300)
    assert model.params == {"top_k": 5, "stop_sequences": ["END"], "seed": 7}
    assert model.price is not None and model.price.output_per_million_usd == 15
    assert spec.system_prompt == "You answer {{level}} questions." and spec.prompt_template == "{{question}}"
    assert spec.input_schema == {"type": "object", "additionalProperties": False, "required": ["question"],
                                 "properties": {"question": {"type": "string", "description": "the question"},
                                                "level": {"enum": ["basic", "expert"]}}}
    assert spec.output_schema is not None and spec.output_schema["properties"]["sources"] == {
        "type": "array", "items": {"type": "string"}, "description": "where it came from"}
    tools = [t.model_dump(exclude_none=True, exclude_defaults=True) for t in spec.tools]
    assert tools == [{"function": "pkg.mod:fn"}, {"mcp": {"command": "mcp-x", "transport": "stdio"}},
                     {"server": "docs"}, {"server": "wiki", "allow": ["search", "read"]},
                     {"lattice": ["submit", "await"]}]
    assert (spec.max_turns, spec.budget.max_cost_usd, spec.description) == (4, 0.5, "Answers about the docs.")


def test_a_body_without_roles_is_the_user_template() -> None:
    agent = parse_prompt("---\nmodel: openai/gpt-4o\nname: hello\n---\nSay hi to {{name}}.\n", "file-stem")
    assert agent.name == "hello" and agent.spec.system_prompt == ""
    assert agent.spec.prompt_template == "Say hi to {{name}}."


@pytest.mark.parametrize(("text", "key", "said"), [
    ("no front matter", "", "starts with YAML front matter"),
    ("---\n[unclosed\n---\nx", "", "not YAML"),
    ("---\nmodel: gpt-4o\n---\nx", "model", "PROVIDER/NAME"),
    ("---\nmodel: googleai/gemini-2.0\n---\nx", "model", "provider 'googleai' is not supported"),
    ("---\nmodel: openai/m\nmodl: x\n---\nx", "modl", "unknown key"),
    ("---\nmodel: openai/m\nlattice.model: x\n---\nx", "lattice.model", "with the file's own keys"),
    ("---\nmodel: openai/m\nlattice.maxTurns: 0\n---\nx", "lattice.maxTurns", "greater than or equal to 1"),
    ("---\nmodel: openai/m\nconfig: {temperature: 9}\n---\nx", "config", "less than or equal to 2"),
    ("---\nmodel: openai/m\nconfig: {metadata: {a: b}}\n---\nx", "config", "valid string"),
    ("---\nmodel: openai/m\ninput: {schema: {a: strng}}\n---\nx", "input.schema", "'strng' is not a type"),
    ("---\nmodel: openai/m\noutput: {format: xml}\n---\nx", "output.format", "json or text"),
    ("---\nmodel: openai/m\ntools: [lattice/fork]\n---\nx", "tools[0]", "lattice tools are"),
    ("---\nmodel: openai/m\n---\n{{media url=x}}", "body", "'media' helper is not supported"),
    ("---\nmodel: openai/m\n---\n{{role \"model\"}}hi", "body", "not supported"),
    ("---\nmodel: openai/m\nname: Bad_Name\n---\nx", "name", "String should match pattern"),
])
def test_what_cannot_be_mapped_names_its_key(text: str, key: str, said: str) -> None:
    with pytest.raises(PromptError) as failure:
        parse_prompt(text, "p")
    found = [(p.key, p.message) for p in failure.value.problems]
    assert any(k == key and said in m for k, m in found), found


def test_picoschema_wildcards_nesting_and_plain_json_schema() -> None:
    assert picoschema({"meta(object)": {"id": "integer"}, "*": "string"}) == {
        "type": "object", "additionalProperties": {"type": "string"}, "required": ["meta"],
        "properties": {"meta": {"type": "object", "properties": {"id": {"type": "integer"}},
                                "additionalProperties": False, "required": ["id"]}}}
    schema = {"type": "object", "properties": {"x": {"type": "number"}}}
    assert picoschema(schema) is schema
    assert picoschema("any") == {}


def test_load_manifests_takes_prompt_files_and_says_where_they_are_wrong(tmp_path: Path) -> None:
    (tmp_path / "good.prompt").write_text("---\nmodel: openai/m\n---\nhi {{input}}\n")
    (tmp_path / "station.yaml").write_text("apiVersion: lattice.station.dev/v1alpha1\nkind: Station\n"
                                           "metadata: {name: s}\nspec: {}\n")
    loaded = load_manifests(tmp_path)
    assert [a.name for a in loaded.agents] == ["good"] and len(loaded.stations) == 1
    (tmp_path / "bad.prompt").write_text("---\nmodel: cohere/x\n---\nhi\n")
    with pytest.raises(ManifestError) as failure:
        load_manifests(tmp_path)
    assert "bad.prompt[0] model: provider 'cohere' is not supported" in str(failure.value)

"""Manifests: one model per kind, validated with file, document index and field path in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from station_runtime.api.loader import ManifestError, load_manifests
from station_runtime.api.models import WorkItemSpec
from station_runtime.examples import DEMO_DIR

GOOD = """\
apiVersion: lattice.station.dev/v1alpha1
kind: Station
metadata: {name: worker}
spec: {replicas: 2, capabilities: [text], labels: {zone: a}, maxConcurrency: 3,
       agentSelector: {matchLabels: {team: docs}}}
---
apiVersion: lattice.station.dev/v1alpha1
kind: Agent
metadata: {name: echo, labels: {team: docs}}
spec:
  capabilities: [summarize]
  model: {provider: echo, params: {delaySeconds: 0.1}}
  stationSelector: {matchExpressions: [{key: zone, operator: In, values: [a, b]}]}
---
apiVersion: lattice.station.dev/v1alpha1
kind: WorkItem
metadata: {name: job-1}
spec: {agent: echo, input: hello, timeouts: {startToCloseSeconds: 30}, maxRetries: 1}
"""


def test_a_directory_of_manifests_loads(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    loaded = load_manifests(tmp_path)
    assert [s.name for s in loaded.stations] == ["worker"]
    station = loaded.stations[0].spec
    assert station.replicas == 2 and station.max_concurrency == 3
    assert station.agent_selector is not None and station.agent_selector.match_labels == {"team": "docs"}
    agent = loaded.agents[0]
    assert agent.spec.model.params == {"delaySeconds": 0.1}
    assert agent.spec.station_selector is not None and agent.spec.station_selector.matches({"zone": "b"})
    assert loaded.work_items[0].spec.timeouts.start_to_close_seconds == 30
    assert len(loaded) == 3


def test_every_problem_is_reported_with_file_index_and_path(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yml").write_text("""\
apiVersion: lattice.station.dev/v1alpha1
kind: Station
metadata: {name: w}
spec: {replicas: -1, maxConcurency: 3}
---
apiVersion: lattice.station.dev/v1alpha1
kind: Agent
metadata: {name: a}
spec: {model: {provider: gpt}}
---
apiVersion: lattice.station.dev/v1alpha1
kind: Agent
metadata: {name: p}
spec: {model: {provider: python}}
---
apiVersion: lattice.station.dev/v1
kind: Station
metadata: {name: old}
---
apiVersion: lattice.station.dev/v1alpha1
kind: Gadget
metadata: {name: g}
---
apiVersion: lattice.station.dev/v1alpha1
kind: WorkItem
metadata: {name: Bad.Name}
spec: {input: x}
""")
    with pytest.raises(ManifestError) as exc:
        load_manifests(tmp_path)
    problems = {(p.file.name, p.index, p.path) for p in exc.value.problems}
    assert ("bad.yml", 0, "spec.replicas") in problems
    assert ("bad.yml", 0, "spec.maxConcurency") in problems  # a typo is an error, not silently ignored
    assert ("bad.yml", 1, "spec.model.provider") in problems
    assert ("bad.yml", 2, "spec.model") in problems
    assert ("bad.yml", 3, "apiVersion") in problems
    assert ("bad.yml", 4, "kind") in problems
    assert ("bad.yml", 5, "metadata.name") in problems
    assert ("bad.yml", 5, "spec") in problems  # neither agent nor capabilities
    text = str(exc.value)
    assert "needs function: 'module:function'" in text
    assert "set agent, requiredCapabilities or steps" in text
    assert "good.yaml" not in text


def test_invalid_yaml_and_missing_paths_are_clear(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("a: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifests(tmp_path)
    with pytest.raises(FileNotFoundError, match="no manifest file or directory"):
        load_manifests(tmp_path / "nope")


def test_duplicate_names_are_rejected(tmp_path: Path) -> None:
    doc = "apiVersion: lattice.station.dev/v1alpha1\nkind: Station\nmetadata: {name: w}\n"
    (tmp_path / "a.yaml").write_text(doc + "---\n" + doc)
    with pytest.raises(ManifestError, match="duplicate Station 'w'"):
        load_manifests(tmp_path)


def test_the_bundled_demo_manifests_are_valid() -> None:
    loaded = load_manifests(DEMO_DIR)
    assert len(loaded.stations) == 1 and len(loaded.agents) == 2


def test_ids_inside_specs_are_validated() -> None:
    with pytest.raises(ValueError, match="must not contain '\\*'"):
        WorkItemSpec(agent="a*")
    with pytest.raises(ValueError, match="invalid capability"):
        WorkItemSpec(required_capabilities=["has space"])


def test_every_example_loads_and_names_only_tool_servers_it_declares() -> None:
    from station_runtime.api.models import referenced_servers
    from station_runtime.examples import EXAMPLES_DIR

    examples = load_manifests(EXAMPLES_DIR)
    names = {a.name for a in examples.agents}
    assert {"assistant", "explainer", "local", "planner", "glossarist", "summarize"} <= names
    assert {a.spec.model.provider for a in examples.agents} >= {"openai", "anthropic"}
    declared = {t.name for t in examples.tool_servers}
    assert {s for a in examples.agents for s in referenced_servers(a)} <= declared
    delegates = {d for a in examples.agents for t in a.spec.tools for d in t.delegate_to}
    assert delegates <= names

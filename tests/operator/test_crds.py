"""The CRDs are generated from the same models as the manifests, and the API server enforces them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from station_runtime.api.crd import all_crds, render
from station_runtime.api.models import GROUP, VERSION
from tests.support.crds import CRD_DIR, install_crds
from tests.support.kube_fixtures import KubeCluster


def test_committed_crds_match_the_models() -> None:
    generated = all_crds()
    committed = {p.name for p in CRD_DIR.glob("*.yaml")}
    assert committed == set(generated), "run `python -m station_runtime.api.crd crds/`"
    for name, crd in generated.items():
        stale = f"{name} is stale: run `python -m station_runtime.api.crd crds/`"
        assert (CRD_DIR / name).read_text() == render(crd), stale


def test_every_status_field_is_declared() -> None:
    for crd in all_crds().values():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        status = schema["properties"]["status"]["properties"]
        assert {"conditions", "observedGeneration"} <= set(status)
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["categories"] == ["lattice"]


def _unstructural(node: Any, path: str = "") -> list[str]:
    """Nodes without a type that do not preserve unknown fields: the API server would reject the CRD."""
    bad = []
    if isinstance(node, dict):
        container = "properties" in node or "items" in node or "additionalProperties" in node
        if container and "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            bad.append(path)
        for key in ("properties",):
            for name, child in node.get(key, {}).items():
                bad += _unstructural(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                bad += _unstructural(node[key], f"{path}[]")
    return bad


def test_schemas_are_structural() -> None:
    for name, crd in all_crds().items():
        assert not _unstructural(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]), name


@pytest.fixture(scope="module")
def crds(kube_cluster: KubeCluster) -> Iterator[Any]:
    with kube_cluster.api_client() as api:
        install_crds(api)
        yield api


def _create(api: Any, namespace: str, doc: str) -> dict[str, Any]:
    body = yaml.safe_load(doc)
    plural = {"Station": "stations", "Agent": "agents", "ToolServer": "toolservers", "WorkItem": "workitems"}[
        body["kind"]]
    result: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body)
    return result


HEAD = f"apiVersion: {GROUP}/{VERSION}\n"


@pytest.mark.k8s
def test_valid_resources_are_accepted_with_defaults(crds: Any, k8s_namespace: str) -> None:
    station = _create(crds, k8s_namespace, HEAD + "kind: Station\nmetadata: {name: worker}\nspec: {replicas: 2}\n")
    assert station["spec"]["maxConcurrency"] == 4  # defaulted by the API server from the model's default
    agent = _create(crds, k8s_namespace, HEAD + "kind: Agent\nmetadata: {name: echo}\n"
                    "spec: {model: {provider: echo, params: {delaySeconds: 0.5}}}\n")
    assert agent["spec"]["model"]["params"] == {"delaySeconds": 0.5}
    work = _create(crds, k8s_namespace, HEAD + "kind: WorkItem\nmetadata: {name: job}\n"
                   "spec: {agent: echo, input: {question: why}}\n")
    assert work["spec"]["input"] == {"question": "why"} and work["spec"]["maxRetries"] == 2


@pytest.mark.k8s
@pytest.mark.parametrize(("doc", "fragment"), [
    ("kind: Station\nmetadata: {name: w}\nspec: {replicas: -1}\n", "spec.replicas"),
    ("kind: Station\nmetadata: {name: w}\nspec: {capabilities: ['a.b']}\n", "spec.capabilities[0]"),
    ("kind: Station\nmetadata: {name: w.x}\nspec: {}\n", "metadata.name"),
    ("kind: Agent\nmetadata: {name: a}\nspec: {model: {provider: gpt}}\n", "spec.model.provider"),
    ("kind: Agent\nmetadata: {name: a}\nspec: {model: {provider: python}}\n", "needs function"),
    ("kind: Agent\nmetadata: {name: a}\nspec: {model: {provider: openai}}\n", "need name: the model to call"),
    ("kind: Agent\nmetadata: {name: a}\nspec: {model: {provider: openai, name: m}, tools: [{server: s, "
     "function: 'm:f'}]}\n", "exactly one of server, mcp, function, lattice"),
    ("kind: Agent\nmetadata: {name: a}\nspec: {model: {provider: echo}, tools: [{server: s}]}\n",
     "tools need a model that calls them"),
    ("kind: ToolServer\nmetadata: {name: t}\nspec: {args: [x]}\n", "needs command (stdio) or url (http)"),
    ("kind: WorkItem\nmetadata: {name: w}\nspec: {input: x}\n", "set agent, requiredCapabilities or steps"),
    ("kind: WorkItem\nmetadata: {name: w}\nspec: {agent: a, maxRetries: 99}\n", "spec.maxRetries"),
])
def test_the_api_server_refuses_invalid_resources_with_a_clear_message(crds: Any, k8s_namespace: str, doc: str,
                                                                      fragment: str) -> None:
    with pytest.raises(ApiException) as exc:
        _create(crds, k8s_namespace, HEAD + doc)
    assert exc.value.status == 422
    assert fragment in str(exc.value.body)

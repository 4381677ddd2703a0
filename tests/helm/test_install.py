"""`helm install` of the platform (auth none) and of two orgs on the test control plane: the operator and NATS run
as pods through the process kubelet, each org's Station becomes Ready, WorkItems succeed, and the two orgs
reconcile independently. See lattice_install.py for how the install is adapted to the process kubelet."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from station_runtime.api.models import GROUP, VERSION
from tests.helm.helmtool import Helm
from tests.helm.lattice_install import (
    AGENT,
    REPLICAS,
    STATION,
    Lattice,
    condition,
    installed,
    result_prefix,
    unique,
)
from tests.support.kube_fixtures import KubeCluster

pytestmark = [pytest.mark.k8s, pytest.mark.helm, pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lattice(kube_cluster: KubeCluster, helm: Helm) -> Iterator[Lattice]:
    with installed(kube_cluster, helm, "none") as lattice:
        yield lattice


def test_work_item_succeeds_after_helm_install(lattice: Lattice) -> None:
    org, namespace = next(iter(lattice.orgs.items()))
    started, name = time.monotonic(), unique("hello")
    lattice.create(namespace, "WorkItem", name, {"agent": AGENT, "input": "hello"})
    item = lattice.wait_finished(namespace, name)
    lattice.timings["work"] = time.monotonic() - started
    assert item["status"]["phase"] == "Succeeded", item["status"]
    assert item["status"]["result"] == f"{result_prefix(org)}hello"
    assert item["status"]["station"] in {f"{STATION}-{i}" for i in range(REPLICAS[0])}
    station = lattice.station_ready(namespace)
    assert station is not None and station["status"]["org"] == org
    # The Agent's status is refreshed on its own timer: it may say Ready (one station hosts it) a moment before
    # it counts both replicas.
    agent = lattice.wait(lambda: (a := lattice.get(namespace, "agents", AGENT)) and (a.get("status") or {})
                         .get("stations") == REPLICAS[0] and a, timeout_s=30, what="the Agent hosted by every replica")
    assert agent["status"]["ready"]


def test_second_org_reconciles_independently(lattice: Lattice) -> None:
    """Same Station and Agent names in both orgs, different replicas and agent prefixes: each org's status counts
    only its own stations, and each org's work runs its own agent."""
    name = unique("both")
    for namespace in lattice.orgs.values():
        lattice.create(namespace, "WorkItem", name, {"agent": AGENT, "input": f"in {namespace}"})
    for (org, namespace), replicas in zip(lattice.orgs.items(), REPLICAS, strict=True):
        item = lattice.wait_finished(namespace, name)
        assert item["status"]["phase"] == "Succeeded", item["status"]
        assert item["status"]["result"] == f"{result_prefix(org)}in {namespace}"
        status = lattice.wait(lambda namespace=namespace, replicas=replicas: (
            s := lattice.station_ready(namespace)) and s["status"].get("readyReplicas") == replicas and s,
            timeout_s=30, what=f"Station {namespace}/{STATION} with {replicas} ready replicas")["status"]
        assert status["org"] == org
        assert sorted(status["stations"]) == [f"{STATION}-{i}" for i in range(replicas)]


def test_a_tenant_cannot_choose_another_org(lattice: Lattice) -> None:
    (org_a, namespace_a), (org_b, _) = lattice.orgs.items()
    name = unique("intruder")
    lattice.create(namespace_a, "Station", name, {"org": org_b, "replicas": 1})
    try:
        station = lattice.wait(lambda: (s := lattice.get(namespace_a, "stations", name)) and condition(s, "Accepted")
                               and s, timeout_s=30, what="the intruder's Accepted condition")
        assert condition(station, "Accepted") == ("False", "OrgMismatch")
        message = next(c["message"] for c in station["status"]["conditions"] if c["type"] == "Accepted")
        assert org_a in message and org_b in message
        apps = client.AppsV1Api(lattice.api)
        assert not [s for s in apps.list_namespaced_stateful_set(namespace_a).items if s.metadata.name == name]
    finally:
        client.CustomObjectsApi(lattice.api).delete_namespaced_custom_object(GROUP, VERSION, namespace_a, "stations",
                                                                             name)


@pytest.mark.parametrize(("verb", "resource", "group", "allowed"), [
    ("create", "statefulsets", "apps", True),
    ("patch", "workitems/status", "lattice.station.dev", True),
    ("delete", "workitems", "lattice.station.dev", True),
    ("list", "toolservers", "lattice.station.dev", True),
    ("patch", "toolservers/status", "lattice.station.dev", True),
    ("get", "secrets", "", True),
    ("list", "secrets", "", False),
    ("delete", "secrets", "", False),
    ("delete", "stations", "lattice.station.dev", False),
    ("create", "pods", "", False),
    ("create", "clusterrolebindings", "rbac.authorization.k8s.io", False),
])
def test_the_operator_service_account_has_only_what_it_needs(lattice: Lattice, verb: str, resource: str,
                                                             group: str, allowed: bool) -> None:
    resource, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=f"system:serviceaccount:{lattice.platform_namespace}:{lattice.operator_service_account()}",
        resource_attributes=client.V1ResourceAttributes(verb=verb, resource=resource, subresource=subresource,
                                                        group=group, namespace=next(iter(lattice.orgs.values())))))
    result = client.AuthorizationV1Api(lattice.api).create_subject_access_review(review)
    assert result.status.allowed is allowed, (verb, resource, result.status)

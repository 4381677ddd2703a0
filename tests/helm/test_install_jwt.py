"""`helm install` with auth.mode=jwt on the test control plane: the pre-install hook runs `lattice auth bootstrap`
(keys Secret + resolver ConfigMap), NATS starts in operator mode with the `full` resolver, the operator gives each
org its own NATS account and each station its own user; two orgs work side by side and cannot see each other.

Skips until `lattice auth bootstrap` exists (JWT mode lands with the operator's auth module)."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.helm.helmtool import PLATFORM_CHART, Helm
from tests.helm.lattice_install import AGENT, STATION, Lattice, installed, result_prefix, unique
from tests.support.kube_fixtures import KubeCluster
from tests.support.tenancy import sees_only_its_own_work


def _bootstrap_missing() -> str | None:
    if importlib.util.find_spec("station_operator.auth") is None:
        return "station_operator.auth does not exist"
    probe = subprocess.run([sys.executable, "-m", "station_runtime", "auth", "bootstrap", "--help"],
                           capture_output=True, text=True, timeout=60, check=False)
    return None if probe.returncode == 0 else f"`lattice auth bootstrap --help` failed: {probe.stderr[-300:]}"


MISSING = _bootstrap_missing()
pytestmark = [pytest.mark.k8s, pytest.mark.helm, pytest.mark.e2e, pytest.mark.timeout(300),
              pytest.mark.skipif(MISSING is not None, reason=f"JWT mode is not there yet ({MISSING}): the chart's "
                                 "bootstrap hook runs `lattice auth bootstrap`")]


@pytest.fixture(scope="module")
def lattice(kube_cluster: KubeCluster, helm: Helm) -> Iterator[Lattice]:
    with installed(kube_cluster, helm, "jwt") as lattice:
        yield lattice


def _secret(lattice: Lattice, namespace: str, name: str) -> dict[str, str]:
    data = client.CoreV1Api(lattice.api).read_namespaced_secret(name, namespace).data or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_the_hook_bootstrapped_keys_and_the_resolver(lattice: Lattice) -> None:
    keys = _secret(lattice, lattice.platform_namespace, "lattice-nats-operator")
    assert keys["operator-seed"].startswith("SO") and keys["system-account-seed"].startswith("SA")
    resolver = client.CoreV1Api(lattice.api).read_namespaced_config_map(
        "lattice-nats-resolver", lattice.platform_namespace).data["resolver.conf"]
    assert "operator:" in resolver and "system_account:" in resolver and "resolver_preload" in resolver
    assert keys["operator-seed"] not in resolver and keys["system-account-seed"] not in resolver
    if lattice.release is not None:  # the succeeded hook Job and its RBAC are gone (hook-succeeded)
        jobs = client.BatchV1Api(lattice.api).list_namespaced_job(lattice.platform_namespace).items
        assert not [j for j in jobs if j.metadata.name.endswith("-auth-bootstrap")]


def test_work_succeeds_in_both_orgs_each_in_its_own_account(lattice: Lattice) -> None:
    name = unique("signed")
    for namespace in lattice.orgs.values():
        lattice.create(namespace, "WorkItem", name, {"agent": AGENT, "input": namespace})
    for org, namespace in lattice.orgs.items():
        item = lattice.wait_finished(namespace, name, timeout_s=90)
        assert item["status"]["phase"] == "Succeeded", item["status"]
        assert item["status"]["result"] == f"{result_prefix(org)}{namespace}"
    accounts = {org: _secret(lattice, lattice.platform_namespace, f"lattice-org-{org}")["account-public-key"]
                for org in lattice.orgs}
    assert len(set(accounts.values())) == 2 and all(key.startswith("A") for key in accounts.values())


def test_a_station_of_one_org_cannot_see_the_other(lattice: Lattice, tmp_path: Path) -> None:
    if lattice.nats_url is None:
        pytest.skip("NATS of the existing cluster is not reachable from the test process")
    (org_a, namespace_a), (org_b, _) = lattice.orgs.items()
    lattice.wait(lambda: client.CoreV1Api(lattice.api).list_namespaced_secret(
        namespace_a, field_selector=f"metadata.name={STATION}-nats").items, timeout_s=30, what="the creds Secret")
    creds = tmp_path / "a.creds"
    creds.write_text(_secret(lattice, namespace_a, f"{STATION}-nats")[f"{STATION}-0.creds"])
    asyncio.run(_can_read_own_work_but_not_the_other(lattice.nats_url, creds, org_a, org_b))


async def _can_read_own_work_but_not_the_other(url: str, creds: Path, org_a: str, org_b: str) -> None:
    import nats

    nc = await nats.connect(url, user_credentials=str(creds), inbox_prefix=f"_INBOX_{STATION}-0",
                            allow_reconnect=False)
    try:
        await sees_only_its_own_work(nc.jetstream(), org_a, org_b)
    finally:
        await nc.close()


def test_upgrade_reruns_the_hook_and_keeps_the_keys(lattice: Lattice, helm: Helm, kube_cluster: KubeCluster) -> None:
    if lattice.release is None:
        pytest.skip("the platform release was installed by scripts/e2e-kind.sh")
    before = _secret(lattice, lattice.platform_namespace, "lattice-nats-operator")
    helm.with_kubeconfig(kube_cluster.kubeconfig).upgrade(lattice.release, PLATFORM_CHART, lattice.platform_namespace)
    assert _secret(lattice, lattice.platform_namespace, "lattice-nats-operator") == before
    org, namespace = next(iter(lattice.orgs.items()))
    name = unique("after-upgrade")
    lattice.create(namespace, "WorkItem", name, {"agent": AGENT, "input": "again"})
    item = lattice.wait_finished(namespace, name, timeout_s=90)
    assert item["status"]["result"] == f"{result_prefix(org)}again", item["status"]

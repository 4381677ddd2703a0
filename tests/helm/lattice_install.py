"""A platform release and two org releases, installed with `helm install` on the test cluster.

On the test control plane the process kubelet runs the pods: the project image maps to the venv's `lattice`, the
`nats` image to the wheel's nats-server. Every pod shares 127.0.0.1, so NATS and the operator's liveness endpoint
get free ports, station pods get no health port, and NATS listens on loopback; Services have no DNS, so everyone
connects to nats://127.0.0.1:<port>. The NATS data is an emptyDir (the kubelet has no PVCs) and its paths are
relative to the data volume (the kubelet does not rewrite paths inside config files).

With USE_EXISTING_CLUSTER=1 (scripts/e2e-kind.sh) nothing is installed: the releases that script installed are
used, named by LATTICE_E2E_PLATFORM_NAMESPACE and LATTICE_E2E_ORGS ("org=namespace,org=namespace").
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from station_runtime.api.models import GROUP, VERSION
from tests.helm.helmtool import ORG_CHART, PLATFORM_CHART, Helm, measurements
from tests.support.controlplane import free_ports
from tests.support.kube_fixtures import KubeCluster, use_existing_cluster
from tests.support.waiting import wait_sync

T = TypeVar("T")

# Fast resyncs and heartbeats, as in tests/operator/test_operator_e2e.py.
FAST_OPERATOR_ENV = {"LATTICE_STATION_HEARTBEAT": "0.5", "LATTICE_STATION_DRAIN_TIMEOUT": "5", "LATTICE_RESYNC": "1",
                     "LATTICE_WORK_RESYNC": "2", "LATTICE_WITNESS_INTERVAL": "0.3"}
#: Station replicas of the first and the second org (different, so that a leak between orgs shows in status).
REPLICAS = (2, 1)
STATION, AGENT = "worker", "echo"


def unique(name: str) -> str:
    """Resource names unique per run, so the tests can run again against the same (kind) cluster."""
    return f"{name}-{uuid.uuid4().hex[:5]}"


def result_prefix(org: str) -> str:
    """The echo agent of each org answers with its own prefix: a result shows which org's agent ran."""
    return f"done-{org}: "


def platform_values(auth: str, nats_port: int, monitor_port: int, liveness_port: int) -> dict[str, Any]:
    url = f"nats://127.0.0.1:{nats_port}"
    return {
        "auth": {"mode": auth},
        # One operator replica (leader election on all the same: its Lease and its RBAC are exercised).
        "operator": {"replicas": 1, "livenessPort": liveness_port, "natsUrl": url, "stationNatsUrl": url,
                     "stationHealthPort": None, "env": FAST_OPERATOR_ENV},
        # One server: the process kubelet runs pods on one host, where three would share the ports.
        "nats": {"replicas": 1, "host": "127.0.0.1", "port": nats_port, "monitorPort": monitor_port,
                 "persistence": {"enabled": False}, "jetstream": {"storeDir": "."}, "resolverDir": "jwt"},
    }


def org_values(org: str, replicas: int) -> dict[str, Any]:
    return {
        "org": {"id": org},
        "stations": {STATION: {"spec": {"replicas": replicas, "capabilities": ["text"], "maxConcurrency": 4}}},
        "agents": {AGENT: {"spec": {"capabilities": ["say"],
                                    "model": {"provider": "echo", "params": {"prefix": result_prefix(org)}}}}},
    }


@dataclass
class Lattice:
    """What the tests get: the platform's namespace and release, the orgs (org id -> namespace), NATS."""

    api: Any
    platform_namespace: str
    release: str | None
    orgs: dict[str, str]
    nats_url: str | None = None
    kube: KubeCluster | None = None
    timings: dict[str, float] = field(default_factory=dict)

    # --- reading and writing resources -----------------------------------------------------------------------

    def get(self, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name)
            return obj
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, namespace: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        client.CustomObjectsApi(self.api).create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                          f"{kind.lower()}s", body)

    def station_ready(self, namespace: str, name: str = STATION) -> dict[str, Any] | None:
        station = self.get(namespace, "stations", name)
        return station if station and condition(station, "Ready") == ("True", "StationsLive") else None

    def wait(self, check: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
        """wait_sync, with the pods' states and the platform's logs in the failure message."""
        try:
            return wait_sync(check, timeout_s=timeout_s, what=what, interval_s=0.1)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.diagnostics()}") from None

    def wait_finished(self, namespace: str, name: str, timeout_s: float = 60) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            item = self.get(namespace, "workitems", name)
            phase = ((item or {}).get("status") or {}).get("phase")
            return item if phase in ("Succeeded", "Failed", "Cancelled", "Escalated") else None

        return self.wait(finished, timeout_s=timeout_s, what=f"WorkItem {namespace}/{name} to finish")

    def operator_service_account(self) -> str:
        deployments = client.AppsV1Api(self.api).list_namespaced_deployment(
            self.platform_namespace, label_selector="app.kubernetes.io/component=operator").items
        assert len(deployments) == 1, [d.metadata.name for d in deployments]
        return str(deployments[0].spec.template.spec.service_account_name)

    # --- diagnostics -----------------------------------------------------------------------------------------

    def diagnostics(self) -> str:
        """Pod states and log tails of the platform, for assertion messages."""
        lines = []
        core = client.CoreV1Api(self.api)
        for namespace in [self.platform_namespace, *self.orgs.values()]:
            with contextlib.suppress(ApiException):
                for pod in core.list_namespaced_pod(namespace).items:
                    states = [(s.name, s.ready, s.restart_count, next(
                        (k for k, v in (s.state.to_dict() if s.state else {}).items() if v), None))
                              for s in pod.status.container_statuses or []]
                    lines.append(f"pod {namespace}/{pod.metadata.name} {pod.status.phase} {states}")
        kubelet = self.kube.kubelet if self.kube else None
        if kubelet is not None:
            with contextlib.suppress(ApiException):
                for pod in core.list_namespaced_pod(self.platform_namespace).items:
                    for container in pod.spec.containers:
                        path = kubelet.log_path(self.platform_namespace, pod.metadata.name, container.name)
                        if path.exists():
                            tail = path.read_text(errors="replace")[-2500:]
                            lines.append(f"--- {pod.metadata.name}/{container.name} log:\n{tail}")
        return "\n".join(lines)


def condition(obj: dict[str, Any], type_: str) -> tuple[str, str] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return str(c["status"]), str(c.get("reason"))
    return None


def _wait_all_stations_ready(lattice: Lattice, timeout_s: float) -> None:
    for namespace in lattice.orgs.values():
        lattice.wait(lambda namespace=namespace: lattice.station_ready(namespace), timeout_s=timeout_s,
                     what=f"Station {namespace}/{STATION} Ready")


def _uninstall_orgs(lattice: Lattice, helm: Helm, releases: list[str]) -> None:
    """Uninstalls the org releases together, and waits for their namespaces to go while the operator still runs
    (it removes the finalizers of Agents and WorkItems)."""
    for release in releases:
        helm.uninstall(release, lattice.platform_namespace, wait=False)
    core = client.CoreV1Api(lattice.api)
    remaining = {lattice.orgs[release] for release in releases}

    def gone() -> bool:
        remaining.difference_update({n for n in remaining if not core.list_namespace(
            field_selector=f"metadata.name={n}").items})
        return not remaining

    try:
        wait_sync(gone, timeout_s=60, what="the org namespaces to be deleted", interval_s=0.2)
    except AssertionError as error:  # a leftover namespace must not fail the tests that passed
        print(f"warning: {error}")


@contextlib.contextmanager
def preinstalled(kube: KubeCluster, auth: str) -> Iterator[Lattice]:
    """The releases scripts/e2e-kind.sh installed on the existing cluster."""
    import pytest

    namespace = os.environ.get("LATTICE_E2E_PLATFORM_NAMESPACE")
    orgs = dict(pair.split("=", 1) for pair in os.environ.get("LATTICE_E2E_ORGS", "").split(",") if "=" in pair)
    if not namespace or len(orgs) < 2:
        pytest.skip("USE_EXISTING_CLUSTER=1: set LATTICE_E2E_PLATFORM_NAMESPACE and LATTICE_E2E_ORGS "
                    "(org=namespace,org=namespace) to the releases installed there (scripts/e2e-kind.sh does)")
    # The auth-none tests hold in both modes; the jwt ones need jwt.
    if auth == "jwt" and os.environ.get("LATTICE_E2E_AUTH", "none") != "jwt":
        pytest.skip("the platform on the existing cluster runs auth none, these tests need auth jwt "
                    "(LATTICE_AUTH_MODE=jwt bash scripts/e2e-kind.sh)")
    with kube.api_client() as api:
        lattice = Lattice(api, namespace, os.environ.get("LATTICE_E2E_RELEASE") or None, orgs, kube=kube)
        _wait_all_stations_ready(lattice, timeout_s=180)
        yield lattice


@contextlib.contextmanager
def installed(kube: KubeCluster, helm: Helm, auth: str) -> Iterator[Lattice]:
    """`helm install` of the platform (with `auth`) and of two orgs on the test control plane; yields once the
    Station of each org is Ready, and uninstalls everything afterwards (orgs first: the operator removes its
    finalizers)."""
    if use_existing_cluster():
        with preinstalled(kube, auth) as lattice:
            yield lattice
        return
    helm = helm.with_kubeconfig(kube.kubeconfig)
    nats_port, monitor_port, liveness_port = free_ports(3)
    suffix = uuid.uuid4().hex[:5]
    release = f"sl-{auth}-{suffix}"
    orgs = {f"org-{letter}-{suffix}": f"org-{letter}-{suffix}" for letter in "ab"}
    with kube.namespace(f"lattice-{auth}") as platform_ns, kube.api_client() as api:
        lattice = Lattice(api, platform_ns, release, orgs, f"nats://127.0.0.1:{nats_port}", kube)
        installed_orgs: list[str] = []
        started = time.monotonic()
        try:
            helm.install(release, PLATFORM_CHART, platform_ns,
                         platform_values(auth, nats_port, monitor_port, liveness_port), timeout_s=120)
            lattice.timings["platform"] = time.monotonic() - started
            for org, replicas in zip(orgs, REPLICAS, strict=True):
                helm.install(org, ORG_CHART, platform_ns, org_values(org, replicas), timeout_s=60)
                installed_orgs.append(org)
            lattice.timings["orgs"] = time.monotonic() - started - lattice.timings["platform"]
            _wait_all_stations_ready(lattice, timeout_s=90)
            lattice.timings["ready"] = time.monotonic() - started
            yield lattice
        except BaseException:
            print(lattice.diagnostics())
            raise
        finally:
            _uninstall_orgs(lattice, helm, installed_orgs)
            helm.uninstall(release, platform_ns, wait=True, timeout_s=60)
        t = lattice.timings
        if "ready" in t:
            measurements.append(
                f"helm install (auth {auth}) on the test control plane: platform {t['platform']:.1f} s (--wait), "
                f"two orgs {t['orgs']:.1f} s, install-to-Ready (both orgs' Stations Ready) {t['ready']:.1f} s"
                + (f", first WorkItem Succeeded {t['work']:.1f} s after Ready" if "work" in t else ""))

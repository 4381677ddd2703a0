"""Pytest plugin: the Kubernetes tier's fixtures (``pytest_plugins = ["tests.support.kube_fixtures"]``).

* ``kube_cluster`` (session): the test control plane plus the process kubelet, or, with
  ``USE_EXISTING_CLUSTER=1``, the cluster ``KUBECONFIG`` points at (no control plane, no process kubelet).
* ``k8s_namespace`` (function): a fresh namespace, deleted afterwards.

Without binaries, tests marked ``k8s`` skip with a hint to run ``make k8s-bin``; with
``LATTICE_REQUIRE_K8S=1`` (CI) that skip is a failure instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import ControlPlane, find_binaries, missing_binaries_message
from tests.support.kubelet import ProcessKubelet
from tests.support.waiting import wait_sync


def use_existing_cluster() -> bool:
    return os.environ.get("USE_EXISTING_CLUSTER", "").lower() in ("1", "true")


def skip_or_fail(message: str) -> None:
    """Skips locally; fails when LATTICE_REQUIRE_K8S=1 so CI cannot go green without the tier."""
    if os.environ.get("LATTICE_REQUIRE_K8S") == "1":
        pytest.fail(f"LATTICE_REQUIRE_K8S=1 but {message}", pytrace=False)
    pytest.skip(message)


def new_api_client(kubeconfig: Path | str) -> Any:
    """A kubernetes ApiClient for that kubeconfig, with a pool large enough for the kubelet's threads."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration)


@dataclass
class KubeCluster:
    """What the Kubernetes tests get: a kubeconfig, clients, the process kubelet (None on a real cluster)."""

    kubeconfig: Path
    kubelet: ProcessKubelet | None = None
    control_plane: ControlPlane | None = None

    def api_client(self) -> Any:
        """A new configured ``kubernetes.client.ApiClient``; use it as a context manager to close it."""
        return new_api_client(self.kubeconfig)

    @contextlib.contextmanager
    def namespace(self, prefix: str = "test") -> Iterator[str]:
        """Creates a uniquely named namespace, waits for its default ServiceAccount, deletes it afterwards."""
        from kubernetes import client

        base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40].rstrip("-") or "test"
        name = f"{base}-{uuid.uuid4().hex[:6]}"
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
            try:
                # Pods are refused until the serviceaccount controller made "default".
                wait_sync(
                    lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
                    timeout_s=30,
                    what=f"the default ServiceAccount in {name}",
                )
                yield name
            finally:
                # Not waited for: the namespace controller finishes in the background.
                with contextlib.suppress(client.exceptions.ApiException):
                    core.delete_namespace(name, _preload_content=False)


def _exists(read: Callable[[], Any]) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        read()
        return True
    except ApiException as error:
        if error.status == 404:
            return False
        raise


_summary: list[str] = []  # measurements shown after the run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _summary:
        terminalreporter.write_line(line)


def missing_reason() -> str | None:
    """Why the test control plane cannot run here, or None. The tier needs the controller-manager too."""
    binaries = find_binaries()
    if binaries is None:
        return missing_binaries_message()
    if binaries.kube_controller_manager is None:
        return (
            f"no kube-controller-manager next to {binaries.kube_apiserver}: add it to KUBEBUILDER_ASSETS, "
            "or unset KUBEBUILDER_ASSETS and run `make k8s-bin`"
        )
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("k8s") and not use_existing_cluster() and (reason := missing_reason()):
        skip_or_fail(reason)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    if use_existing_cluster():
        kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        yield KubeCluster(Path(kubeconfig.split(os.pathsep)[0]))
        return
    if reason := missing_reason():
        skip_or_fail(reason)
        return
    binaries = find_binaries()
    assert binaries is not None
    with ControlPlane(binaries) as plane:
        kubelet_dir = Path(tempfile.mkdtemp(prefix="lattice-kubelet-"))
        kubelet = ProcessKubelet(
            new_api_client(plane.kubeconfig), kubelet_dir, bind_default=not plane.run_scheduler
        )
        try:
            kubelet.start()
            yield KubeCluster(plane.kubeconfig, kubelet, plane)
            rss = ", ".join(f"{name} {kib // 1024} MiB" for name, kib in plane.rss_kib().items())
            _summary.append(f"test control plane: started in {plane.startup_s:.1f} s; RSS at the end: {rss}")
        finally:
            kubelet.stop()
            kubelet.api_client.close()
            if plane.keep_dir:
                print(f"kept the process kubelet's dir {kubelet_dir}")
            else:
                shutil.rmtree(kubelet_dir, ignore_errors=True)


@pytest.fixture
def k8s_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with kube_cluster.namespace(request.node.name) as name:
        yield name

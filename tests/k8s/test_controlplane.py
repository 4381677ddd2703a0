"""The test control plane is a real one, and the process kubelet really runs pods.

Each test checks something envtest alone cannot do (controllers, garbage collection, running pods) or that the
API server itself enforces (CRD schemas), against real etcd + kube-apiserver + kube-controller-manager.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.controlplane import Binaries, ControlPlane, ControlPlaneError, free_ports
from tests.support.kube_fixtures import KubeCluster
from tests.support.kubelet import ProcessKubelet
from tests.support.kubelet_spec import BINDER_NAME, python_command
from tests.support.waiting import wait_sync

TEST_IMAGE = "lattice-test/python:1"

# Serves its pid over HTTP on $PORT (also the readiness probe) and exits on SIGTERM like any Python process.
PID_SERVER = r"""
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

# Prints what the process sees: its argv, selected env vars and the files under the mounted paths.
REPORT = r"""
import json, os, pathlib, sys
files = {}
for root in sys.argv[1:3]:
    for path in sorted(pathlib.Path(root).rglob("*")):
        if path.is_file():
            files[str(path.relative_to(root))] = path.read_text()
names = ("GREETING", "LEVEL", "TOKEN", "POD_NAME", "POD_IP", "MESSAGE", "CONFIG", "KUBELET_MOUNT_ETC_LATTICE")
print(json.dumps({"argv": sys.argv[1:], "env": {n: os.environ.get(n) for n in names}, "files": files}))
"""

# Fails on its first run, succeeds on the second: the restart happens in the same pod dir.
FAIL_ONCE = r"""
import pathlib, sys
marker = pathlib.Path("ran-once")
if not marker.exists():
    marker.write_text("x")
    print("first run fails")
    sys.exit(3)
print("second run succeeds")
"""


def python_pod(name: str, code: str, restart_policy: str) -> dict[str, Any]:
    """A one-container pod running ``python -c code`` through the process kubelet's test image."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart_policy,
                     "containers": [{"name": "main", "image": TEST_IMAGE, "command": ["python", "-c", code]}]}}


@pytest.fixture
def api(kube_cluster: KubeCluster) -> Iterator[client.ApiClient]:
    with kube_cluster.api_client() as api_client:
        yield api_client


@pytest.fixture
def kubelet(kube_cluster: KubeCluster) -> ProcessKubelet:
    if kube_cluster.kubelet is None:
        pytest.skip("needs the process kubelet (not on USE_EXISTING_CLUSTER)")
    kube_cluster.kubelet.register_image("lattice-test/python", python_command)
    return kube_cluster.kubelet


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan's zombie may linger un-reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(core.read_namespaced_pod(name, namespace, _preload_content=False).data))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def pod_phase_is(core: client.CoreV1Api, namespace: str, name: str, phase: str) -> dict[str, Any] | None:
    pod = read_pod(core, namespace, name)
    return pod if pod and pod.get("status", {}).get("phase") == phase else None


# --- the API server -------------------------------------------------------------------------------


@pytest.mark.k8s
def test_api_server_rejects_objects_that_violate_a_crd_schema(
    api: client.ApiClient, k8s_namespace: str
) -> None:
    extensions, objects = client.ApiextensionsV1Api(api), client.CustomObjectsApi(api)
    group, plural = "tests.lattice.example", "widgets"
    spec_schema = {
        "type": "object",
        "required": ["size"],
        "properties": {
            "size": {"type": "integer", "minimum": 1},
            "color": {"type": "string", "enum": ["red", "green"]},
            "label": {"type": "string", "pattern": "^[a-z]+$"},
        },
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}},
                }
            ],
        },
    }
    extensions.create_custom_resource_definition(crd)
    try:
        wait_sync(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in extensions.read_custom_resource_definition(f"{plural}.{group}").status.conditions
                or []
            ),
            timeout_s=30,
            what="the CRD to be Established",
        )

        def widget(name: str, spec: dict[str, Any]) -> dict[str, Any]:
            return {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}

        # Given a valid object, I expect it stored; given one breaking three rules, a 422 naming each field.
        objects.create_namespaced_custom_object(
            group, "v1", k8s_namespace, plural, widget("good", {"size": 2, "color": "red", "label": "ok"})
        )
        with pytest.raises(ApiException) as rejected:
            objects.create_namespaced_custom_object(
                group,
                "v1",
                k8s_namespace,
                plural,
                widget("bad", {"size": 0, "color": "blue", "label": "No!"}),
            )
        assert rejected.value.status == 422
        message = json.loads(rejected.value.body)["message"]
        for field in ("spec.size", "spec.color", "spec.label"):
            assert field in message
        with pytest.raises(ApiException) as missing:
            objects.create_namespaced_custom_object(group, "v1", k8s_namespace, plural, widget("empty", {}))
        assert missing.value.status == 422
        assert "spec.size: Required value" in json.loads(missing.value.body)["message"]
    finally:
        extensions.delete_custom_resource_definition(f"{plural}.{group}")


# --- the controller-manager -----------------------------------------------------------------------


@pytest.mark.k8s
def test_deleting_an_owner_garbage_collects_its_dependents(api: client.ApiClient, k8s_namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        k8s_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        k8s_namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])),
    )
    core.create_namespaced_config_map(
        k8s_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander"))
    )

    core.delete_namespaced_config_map("owner", k8s_namespace)

    def names() -> set[str]:
        return {item.metadata.name for item in core.list_namespaced_config_map(k8s_namespace).items}

    wait_sync(
        lambda: "dependent" not in names(), timeout_s=30, what="the garbage collector to delete 'dependent'"
    )
    assert "bystander" in names()


# --- the process kubelet --------------------------------------------------------------------------


def pid_server_deployment(port: int) -> dict[str, Any]:
    labels = {"app": "pid-server"}
    container = {
        "name": "server",
        "image": TEST_IMAGE,
        "command": ["python", "-c", PID_SERVER],
        "env": [{"name": "PORT", "value": str(port)}],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "pid-server"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 5},
            },
        },
    }


@pytest.mark.k8s
@pytest.mark.timeout(180)
def test_a_deployment_runs_as_a_process_becomes_available_and_stops_when_deleted(
    api: client.ApiClient, kubelet: ProcessKubelet, k8s_namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    (port,) = free_ports(1)
    apps.create_namespaced_deployment(k8s_namespace, pid_server_deployment(port))

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("pid-server", k8s_namespace).status
        return any(c.type == "Available" and c.status == "True" for c in status.conditions or []) and (
            status.available_replicas == 1
        )

    wait_sync(available, timeout_s=60, what="the Deployment to become Available")

    # The pod the ReplicaSet made was scheduled onto the kubelet's node and runs as a local process...
    (pod,) = core.list_namespaced_pod(k8s_namespace, label_selector="app=pid-server").items
    assert pod.spec.node_name == kubelet.node_name
    assert pod.status.pod_ip == "127.0.0.1"
    (status,) = pod.status.container_statuses
    pid = int(status.container_id.removeprefix("process://"))
    # ...which answers the readiness probe's port with its own pid.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert int(response.read()) == pid
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == sys.executable.encode()

    apps.delete_namespaced_deployment("pid-server", k8s_namespace)

    wait_sync(lambda: not pid_alive(pid), timeout_s=60, what=f"process {pid} to stop after the deletion")
    wait_sync(
        lambda: read_pod(core, k8s_namespace, pod.metadata.name) is None,
        timeout_s=30,
        what="the kubelet to remove the terminated pod",
    )
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


@pytest.mark.k8s
def test_secrets_configmaps_and_the_downward_api_reach_the_process(
    api: client.ApiClient, kubelet: ProcessKubelet, k8s_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        k8s_namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="settings"),
            data={"GREETING": "hello", "LEVEL": "debug", "app.yaml": "level: debug\n", "unused": "x"},
        ),
    )
    core.create_namespaced_secret(
        k8s_namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="credentials"), string_data={"token": "s3cret"}),
    )
    container = {
        "name": "report",
        "image": TEST_IMAGE,
        "command": ["python", "-c", REPORT],
        "args": ["/etc/lattice", "/etc/lattice-secret", "--greeting=$(GREETING)", "$$(GREETING)"],
        "envFrom": [{"configMapRef": {"name": "settings"}}],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "credentials", "key": "token"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MESSAGE", "value": "$(GREETING), $(POD_NAME)"},
            {"name": "CONFIG", "value": "/etc/lattice/app.yaml"},
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/lattice"},
            {"name": "secret", "mountPath": "/etc/lattice-secret"},
        ],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "report"},
        "spec": {
            # Bound by the process kubelet itself, not by kube-scheduler.
            "schedulerName": BINDER_NAME,
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [
                {
                    "name": "config",
                    "configMap": {"name": "settings", "items": [{"key": "app.yaml", "path": "app.yaml"}]},
                },
                {
                    "name": "secret",
                    "secret": {
                        "secretName": "credentials",
                        "items": [{"key": "token", "path": "nested/token"}],
                    },
                },
            ],
        },
    }
    core.create_namespaced_pod(k8s_namespace, pod)

    wait_sync(
        lambda: pod_phase_is(core, k8s_namespace, "report", "Succeeded"),
        timeout_s=60,
        what="the report pod to succeed",
    )
    log = kubelet.log_path(k8s_namespace, "report", "report").read_text()
    report = json.loads(log.splitlines()[-1])
    config_dir = report["env"]["KUBELET_MOUNT_ETC_LATTICE"]
    assert config_dir and Path(config_dir).is_relative_to(kubelet.pod_dir(k8s_namespace, "report"))
    assert report["argv"] == [config_dir, report["argv"][1], "--greeting=hello", "$(GREETING)"]
    assert report["env"] == {
        "GREETING": "hello",
        "LEVEL": "debug",
        "TOKEN": "s3cret",
        "POD_NAME": "report",
        "POD_IP": "127.0.0.1",
        "MESSAGE": "hello, report",
        "CONFIG": f"{config_dir}/app.yaml",
        "KUBELET_MOUNT_ETC_LATTICE": config_dir,
    }
    # Only the selected items are materialised, under their paths.
    assert report["files"] == {"app.yaml": "level: debug\n", "nested/token": "s3cret"}


@pytest.mark.k8s
def test_a_failing_container_is_restarted_per_restart_policy(
    api: client.ApiClient, kubelet: ProcessKubelet, k8s_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(k8s_namespace, python_pod("flaky", FAIL_ONCE, "OnFailure"))

    pod = wait_sync(
        lambda: pod_phase_is(core, k8s_namespace, "flaky", "Succeeded"),
        timeout_s=60,
        what="the flaky pod to succeed after one restart",
    )
    (status,) = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0
    log = kubelet.log_path(k8s_namespace, "flaky", "main").read_text()
    assert log.splitlines() == ["first run fails", "second run succeeds"]


# Ignores SIGTERM, and so does the child it starts in its process group: only SIGKILL to the group ends both.
STUBBORN = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", ignore])
print(f"child {child.pid}", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.k8s
def test_a_pod_that_ignores_sigterm_is_killed_with_its_children_after_the_grace_period(
    api: client.ApiClient, kubelet: ProcessKubelet, k8s_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    grace_s = 1
    container = {"name": "main", "image": TEST_IMAGE, "command": ["python", "-c", STUBBORN]}
    core.create_namespaced_pod(
        k8s_namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "stubborn"},
            "spec": {"terminationGracePeriodSeconds": grace_s, "containers": [container]},
        },
    )
    log_path = kubelet.log_path(k8s_namespace, "stubborn", "main")
    child_line = wait_sync(
        lambda: (
            log_path.exists()
            and next((line for line in log_path.read_text().splitlines() if line.startswith("child ")), None)
        ),
        timeout_s=60,
        what="the stubborn pod to start its child",
    )
    child = int(child_line.split()[1])
    pod = wait_sync(
        lambda: pod_phase_is(core, k8s_namespace, "stubborn", "Running"),
        timeout_s=30,
        what="the stubborn pod to run",
    )
    main = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))

    deleted = time.monotonic()
    core.delete_namespaced_pod("stubborn", k8s_namespace)
    wait_sync(
        lambda: not pid_alive(main) and not pid_alive(child),
        timeout_s=30,
        what="SIGKILL to end the pod's process group",
    )
    assert time.monotonic() - deleted >= grace_s
    assert "ignoring SIGTERM" in log_path.read_text()
    wait_sync(
        lambda: read_pod(core, k8s_namespace, "stubborn") is None,
        timeout_s=30,
        what="the kubelet to remove the pod",
    )


WHOAMI = r"""
from kubernetes import client, config
config.load_kube_config()  # KUBECONFIG, written by the process kubelet from the pod's projected token
review = client.AuthenticationV1Api().create_self_subject_review(client.V1SelfSubjectReview())
print(review.status.user_info.username)
"""


@pytest.mark.k8s
def test_a_pod_reaches_the_api_as_its_service_account(
    api: client.ApiClient, kubelet: ProcessKubelet, k8s_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(k8s_namespace, python_pod("whoami", WHOAMI, "Never"))

    wait_sync(
        lambda: pod_phase_is(core, k8s_namespace, "whoami", "Succeeded"),
        timeout_s=60,
        what="the whoami pod to succeed",
    )
    log = kubelet.log_path(k8s_namespace, "whoami", "main").read_text()
    assert log.splitlines()[-1] == f"system:serviceaccount:{k8s_namespace}:default"


@pytest.mark.k8s
def test_the_kubelet_keeps_working_after_its_watch_breaks(
    api: client.ApiClient, kubelet: ProcessKubelet, k8s_namespace: str
) -> None:
    core = client.CoreV1Api(api)
    kubelet.interrupt_watch()
    core.create_namespaced_pod(
        k8s_namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "after-break"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": TEST_IMAGE, "command": ["python", "-c", "pass"]}],
            },
        },
    )
    wait_sync(
        lambda: pod_phase_is(core, k8s_namespace, "after-break", "Succeeded"),
        timeout_s=60,
        what="a pod created after the watch broke to run",
    )


# --- the control plane's own failure reporting ----------------------------------------------------


def test_a_component_that_dies_at_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    etcd = tmp_path / "etcd"
    etcd.write_text("#!/bin/sh\necho 'etcd: cannot open the data dir' >&2\nexit 7\n")
    etcd.chmod(0o755)
    plane = ControlPlane(
        Binaries(
            etcd=etcd, kube_apiserver=etcd, kube_controller_manager=None, kube_scheduler=None, kubectl=None
        ),
        keep_dir=False,
    )
    with pytest.raises(ControlPlaneError, match=r"(?s)etcd exited with code 7.*cannot open the data dir"):
        plane.start()
    assert plane.components == []
    assert not plane.dir.exists()

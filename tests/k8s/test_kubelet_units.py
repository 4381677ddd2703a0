"""The process kubelet's pure parts: image → command, env, $(VAR) expansion, paths, volumes, status.

No cluster needed: API reads go through a fake PodSources.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import Binaries, find_binaries
from tests.support.kubelet_spec import (
    ContainerRun,
    Exit,
    ImageMap,
    PodConfigError,
    UnknownImage,
    container_env,
    expand,
    image_repository,
    mount_env_name,
    pod_phase,
    python_command,
    restart_backoff_s,
    rewrite_paths,
    venv_bin,
)
from tests.support.kubelet_volumes import container_mounts, materialize_volume, run_probe


class FakeSources:
    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, bytes]] = {"creds": {"token": b"s3cret", "user": b"admin"}}
        self.config_maps: dict[str, dict[str, bytes]] = {"settings": {"GREETING": b"hi", "LEVEL": b"debug"}}

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.secrets.get(name)

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.config_maps.get(name)

    def token(self, pod: dict[str, Any], audience: str | None, expiration_s: int) -> str:
        return f"token-for-{pod['metadata']['name']}"


def make_pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-0", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}], **spec},
    }


# --- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("nats", "nats"),
        ("nats:2.12-alpine", "nats"),
        ("ghcr.io/station-lattice/station-lattice:0.1.0", "ghcr.io/station-lattice/station-lattice"),
        ("localhost:5000/station-lattice", "localhost:5000/station-lattice"),
        ("docker.io/library/nats@sha256:abc", "docker.io/library/nats"),
    ],
)
def test_image_repository_drops_tag_and_digest_but_not_a_registry_port(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_station_lattice_images_run_the_venvs_console_scripts() -> None:
    images = ImageMap()
    lattice = str(venv_bin() / "lattice")
    assert images.argv("ghcr.io/station-lattice/station-lattice:0.1.0", [], ["station", "run"]) == [
        lattice,
        "station",
        "run",
    ]
    assert images.argv("station-lattice", ["lattice", "operator"], ["--verbose"]) == [
        lattice,
        "operator",
        "--verbose",
    ]
    # A program that is not in the venv is taken from PATH.
    assert images.argv("station-lattice", ["sh", "-c", "true"], [])[1:] == ["-c", "true"]


def test_nats_images_run_the_wheels_nats_server() -> None:
    images = ImageMap()
    argv = images.argv("docker.io/library/nats:2.12", [], ["--jetstream", "--port=4222"])
    assert Path(argv[0]).name == "nats-server" and Path(argv[0]).is_file()
    assert argv[1:] == ["--jetstream", "--port=4222"]
    assert images.argv("nats", ["nats-server", "-js"], [])[1:] == ["-js"]


def test_a_registered_image_wins_and_unknown_images_are_refused() -> None:
    images = ImageMap()
    with pytest.raises(UnknownImage, match="lattice-test/python"):
        images.argv("lattice-test/python:1", ["python", "-c", "pass"], [])
    images.register("lattice-test/python", python_command)
    assert images.argv("lattice-test/python:1", ["python", "-c", "pass"], ["a"]) == [
        sys.executable,
        "-c",
        "pass",
        "a",
    ]
    images.register("*/station-lattice", lambda command, args: ["override", *args])
    assert images.argv("ghcr.io/x/station-lattice:1", [], ["a"]) == ["override", "a"]


# --- $(VAR) expansion and env ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$(MISSING)", "$(MISSING)"),  # undefined references stay as they are
        ("$$(A)", "$(A)"),  # $$ escapes
        ("cost: $$5 $", "cost: $5 $"),
        ("$(A", "$(A"),  # incomplete reference
        ("$x $(A)", "$x 1"),
        ("no refs", "no refs"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expanded: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == expanded


def test_env_merges_env_from_then_env_with_references_and_downward_api() -> None:
    pod = make_pod()
    container = {
        "envFrom": [
            {"configMapRef": {"name": "settings"}},
            {"secretRef": {"name": "creds"}, "prefix": "DB_"},
        ],
        "env": [
            {"name": "LEVEL", "value": "info"},  # env overrides envFrom
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MSG", "value": "$(GREETING) from $(POD)"},  # POD is defined later: stays literal
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
    }
    env = container_env(pod, container, FakeSources(), {"HOME": "/pod"})
    assert env == {
        "HOME": "/pod",
        "GREETING": "hi",
        "LEVEL": "info",
        "DB_token": "s3cret",
        "DB_user": "admin",
        "TOKEN": "s3cret",
        "MSG": "hi from $(POD)",
        "POD": "web-0",
        "NS": "ns",
        "IP": "127.0.0.1",
        "NODE": "node-a",
        "APP": "web",
    }


@pytest.mark.parametrize(
    "env",
    [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}},
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "missing"}}},
        {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}},
    ],
)
def test_unresolvable_env_is_a_config_error(env: dict[str, Any]) -> None:
    with pytest.raises(PodConfigError):
        container_env(make_pod(), {"env": [env]}, FakeSources(), {})


# --- paths and volumes ----------------------------------------------------------------------------


def test_mount_env_names() -> None:
    assert mount_env_name("/etc/lattice") == "KUBELET_MOUNT_ETC_LATTICE"
    assert mount_env_name("/var/run/secrets/nats.io/") == "KUBELET_MOUNT_VAR_RUN_SECRETS_NATS_IO"


@pytest.mark.parametrize(
    ("text", "rewritten"),
    [
        ("/etc/lattice", "/L"),
        ("/etc/lattice/config.yaml", "/L/config.yaml"),
        ("--config=/etc/lattice/config.yaml", "--config=/L/config.yaml"),
        ("/etc/lattice-secret/token", "/S/token"),  # the longer mountPath, not /etc/lattice + "-secret"
        ("/etc/lattice2/x", "/etc/lattice2/x"),
        ("/srv/etc/lattice", "/srv/etc/lattice"),
        ("a:/etc/lattice,b:/data", "a:/L,b:/D"),
        ("/data/sub/file", "/DS/file"),
        ("nothing here", "nothing here"),
    ],
)
def test_rewrite_paths_replaces_whole_mount_paths_only(text: str, rewritten: str) -> None:
    mounts = {"/etc/lattice": "/L", "/etc/lattice-secret/": "/S", "/data": "/D", "/data/sub": "/DS"}
    assert rewrite_paths(text, mounts) == rewritten


def test_only_the_containers_own_values_are_rewritten() -> None:
    # A /tmp mount must not touch the kubelet's own values, which live under /tmp too.
    mounts = {"/tmp": "/tmp/k/pods/p/volumes/tmp"}
    container = {
        "env": [
            {"name": "SCRATCH", "value": "/tmp/scratch"},
            {"name": "UNDER_HOME", "value": "$(HOME)/x"},
            {"name": "FROM_CONFIG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "DIR"}}},
        ]
    }
    sources = FakeSources()
    sources.config_maps["settings"]["DIR"] = b"/tmp/from-config"
    env = container_env(
        make_pod(), container, sources, {"HOME": "/tmp/k/pods/p"}, lambda v: rewrite_paths(v, mounts)
    )
    assert env == {
        "HOME": "/tmp/k/pods/p",
        "SCRATCH": "/tmp/k/pods/p/volumes/tmp/scratch",
        "UNDER_HOME": "/tmp/k/pods/p/x",
        "FROM_CONFIG": "/tmp/k/pods/p/volumes/tmp/from-config",
    }


def test_a_rewritten_path_is_not_rewritten_again() -> None:
    # The local dir may itself contain a mountPath (pod dirs live under /tmp).
    assert rewrite_paths("/tmp/x", {"/tmp": "/tmp/pods/p/volumes/tmp"}) == "/tmp/pods/p/volumes/tmp/x"


def test_volumes_are_materialised_as_files(tmp_path: Path) -> None:
    pod = make_pod()
    sources = FakeSources()
    sources.config_maps["settings"]["app.yaml"] = b"a: 1\n"
    secret = materialize_volume(
        pod, {"name": "s", "secret": {"secretName": "creds", "defaultMode": 0o400}}, tmp_path / "s", sources
    )
    assert (secret / "token").read_bytes() == b"s3cret" and (secret / "user").read_bytes() == b"admin"
    assert (secret / "token").stat().st_mode & 0o777 == 0o400
    config = materialize_volume(
        pod,
        {
            "name": "c",
            "configMap": {"name": "settings", "items": [{"key": "app.yaml", "path": "conf/app.yaml"}]},
        },
        tmp_path / "c",
        sources,
    )
    assert [p.relative_to(config).as_posix() for p in config.rglob("*") if p.is_file()] == ["conf/app.yaml"]
    projected = materialize_volume(
        pod,
        {
            "name": "api",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token"}},
                    {"configMap": {"name": "settings", "items": [{"key": "GREETING", "path": "greeting"}]}},
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ]
            },
        },
        tmp_path / "api",
        sources,
    )
    assert (projected / "token").read_text() == "token-for-web-0"
    assert (projected / "greeting").read_text() == "hi"
    assert (projected / "namespace").read_text() == "ns"
    empty = materialize_volume(pod, {"name": "e", "emptyDir": {}}, tmp_path / "e", sources)
    assert empty.is_dir() and not any(empty.iterdir())
    assert materialize_volume(
        pod, {"name": "o", "secret": {"secretName": "nope", "optional": True}}, tmp_path / "o", sources
    ).is_dir()
    with pytest.raises(PodConfigError, match="nope"):
        materialize_volume(pod, {"name": "m", "secret": {"secretName": "nope"}}, tmp_path / "m", sources)
    with pytest.raises(PodConfigError, match="unsupported"):
        materialize_volume(
            pod, {"name": "p", "persistentVolumeClaim": {"claimName": "x"}}, tmp_path / "p", sources
        )


def test_container_mounts_honour_sub_path() -> None:
    volumes = {"config": Path("/pods/p/volumes/config")}
    container = {
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "config", "mountPath": "/etc/app.yaml", "subPath": "app.yaml"},
        ]
    }
    assert container_mounts(container, volumes) == {
        "/etc/app": "/pods/p/volumes/config",
        "/etc/app.yaml": "/pods/p/volumes/config/app.yaml",
    }
    with pytest.raises(PodConfigError):
        container_mounts({"volumeMounts": [{"name": "other", "mountPath": "/x"}]}, volumes)


# --- status ---------------------------------------------------------------------------------------


def run(*, running: bool = False, exit_code: int | None = None, started: bool = True) -> ContainerRun:
    state = ContainerRun({"name": "c"})
    if running:
        state.proc = object()  # type: ignore[assignment]  # only compared with None here
    if started:
        state.started_at = "t"
    if exit_code is not None:
        state.last_exit = Exit(exit_code, "Error", "t", "t")
    return state


@pytest.mark.parametrize(
    ("policy", "runs", "phase"),
    [
        ("Always", [run(started=False)], "Pending"),
        ("Always", [run(running=True), run(started=False)], "Pending"),
        ("Always", [run(running=True)], "Running"),
        ("Always", [run(exit_code=0)], "Running"),  # will be restarted
        ("OnFailure", [run(exit_code=1)], "Running"),
        ("OnFailure", [run(exit_code=0)], "Succeeded"),
        ("Never", [run(exit_code=0), run(exit_code=2)], "Failed"),
        ("Never", [run(exit_code=0), run(running=True)], "Running"),
    ],
)
def test_pod_phase(policy: str, runs: list[ContainerRun], phase: str) -> None:
    assert pod_phase(policy, False, runs) == phase


def test_restart_backoff_doubles_up_to_a_cap() -> None:
    assert [restart_backoff_s(n) for n in (1, 2, 3, 10)] == [0.2, 0.4, 0.8, 5.0]


# --- probes ---------------------------------------------------------------------------------------


@pytest.fixture
def http_port() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ready" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probes(http_port: int, tmp_path: Path) -> None:
    container = {"ports": [{"name": "http", "containerPort": http_port}]}
    images = ImageMap()
    images.register("t", python_command)

    def argv(command: list[str]) -> list[str]:
        return images.argv("t", command, [])

    def probe(spec: dict[str, Any]) -> bool:
        return run_probe(spec, container, argv, {"CODE": "0"}, tmp_path)

    assert probe({"httpGet": {"path": "/ready", "port": "http"}})
    assert not probe({"httpGet": {"path": "/other", "port": http_port}})
    assert probe({"tcpSocket": {"port": http_port}})
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        assert not probe({"tcpSocket": {"port": unused.getsockname()[1]}})
    assert probe({"exec": {"command": ["python", "-c", "import os, sys; sys.exit(int(os.environ['CODE']))"]}})
    assert not probe({"exec": {"command": ["python", "-c", "raise SystemExit(1)"]}})
    with pytest.raises(PodConfigError):
        probe({"grpc": {"port": 1}})


# --- binaries -------------------------------------------------------------------------------------


def test_kubebuilder_assets_are_preferred_and_each_tool_is_looked_up_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assert find_binaries() is None
    for name in ("etcd", "kube-apiserver"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    assert find_binaries() == Binaries(
        etcd=tmp_path / "etcd",
        kube_apiserver=tmp_path / "kube-apiserver",
        kube_controller_manager=None,
        kube_scheduler=None,
        kubectl=None,
    )

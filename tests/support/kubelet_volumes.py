"""The process kubelet's local side effects for one pod: its volumes written out as files (Secret, ConfigMap,
downwardAPI, projected, emptyDir, hostPath) and its readiness probes (exec, httpGet, tcpSocket)."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.support.kubelet_spec import (
    POD_IP,
    Container,
    Pod,
    PodConfigError,
    PodSources,
    field_value,
)

# --- volumes --------------------------------------------------------------------------------------


def _write_files(
    target: Path,
    data: Mapping[str, bytes],
    items: list[dict[str, Any]] | None,
    default_mode: int | None,
    what: str,
) -> None:
    """Writes keys as files: all keys, or only ``items`` (key → path, optional mode)."""
    selected = items if items is not None else [{"key": key, "path": key} for key in data]
    for item in selected:
        if item["key"] not in data:
            raise PodConfigError(f"{what} has no key {item['key']!r}")
        path = target / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[item["key"]])
        path.chmod(int(item.get("mode", default_mode if default_mode is not None else 0o644)))


def _object_files(
    target: Path, source: dict[str, Any], data: dict[str, bytes] | None, kind: str, default_mode: int | None
) -> None:
    name = source.get("name") or source.get("secretName")
    if data is None:
        if source.get("optional"):
            return
        raise PodConfigError(f"{kind} {name!r} not found")
    _write_files(
        target, data, source.get("items"), source.get("defaultMode", default_mode), f"{kind} {name!r}"
    )


def materialize_volume(pod: Pod, volume: dict[str, Any], target: Path, sources: PodSources) -> Path:
    """Creates the volume's files under target; returns the local path to mount (hostPath: the host path)."""
    namespace = pod["metadata"]["namespace"]
    if "hostPath" in volume:
        return Path(volume["hostPath"]["path"])
    target.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        pass
    elif spec := volume.get("secret"):
        _object_files(target, spec, sources.secret(namespace, spec["secretName"]), "secret", None)
    elif spec := volume.get("configMap"):
        _object_files(target, spec, sources.config_map(namespace, spec["name"]), "configMap", None)
    elif spec := volume.get("downwardAPI"):
        _downward_files(pod, target, spec.get("items", []))
    elif spec := volume.get("projected"):
        mode = spec.get("defaultMode")
        for projection in spec.get("sources", []):
            if part := projection.get("secret"):
                _object_files(target, part, sources.secret(namespace, part["name"]), "secret", mode)
            elif part := projection.get("configMap"):
                _object_files(target, part, sources.config_map(namespace, part["name"]), "configMap", mode)
            elif part := projection.get("downwardAPI"):
                _downward_files(pod, target, part.get("items", []))
            elif part := projection.get("serviceAccountToken"):
                token = sources.token(pod, part.get("audience"), part.get("expirationSeconds", 3600))
                _write_files(
                    target,
                    {"token": token.encode()},
                    [{"key": "token", "path": part["path"]}],
                    0o600,
                    "token",
                )
            else:
                raise PodConfigError(f"unsupported projected source {sorted(projection)}")
    else:
        raise PodConfigError(f"unsupported volume type in {sorted(volume)}")
    return target


def _downward_files(pod: Pod, target: Path, items: list[dict[str, Any]]) -> None:
    for item in items:
        if "fieldRef" not in item:
            raise PodConfigError(f"unsupported downwardAPI item {item.get('path')!r}")
        path = target / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(field_value(pod, item["fieldRef"]["fieldPath"]))


def container_mounts(container: Container, volume_paths: Mapping[str, Path]) -> dict[str, str]:
    """mountPath → local path, for the container's volumeMounts (subPath honoured)."""
    mounts = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volume_paths:
            raise PodConfigError(f"volumeMount {mount['name']!r} names no volume")
        local = volume_paths[mount["name"]] / mount.get("subPath", "")
        mounts[mount["mountPath"]] = str(local).rstrip("/")
    return mounts


# --- probes ---------------------------------------------------------------------------------------


def _probe_port(port: int | str, container: Container) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise PodConfigError(f"probe names unknown port {port!r}")


def _unverified_tls() -> ssl.SSLContext:
    """Like the kubelet, HTTPS probes do not verify the certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def run_probe(
    probe: dict[str, Any],
    container: Container,
    argv: Callable[[list[str]], list[str]],
    env: Mapping[str, str],
    cwd: Path,
) -> bool:
    """One probe attempt: exec (exit 0), httpGet on 127.0.0.1 (2xx/3xx), tcpSocket (connects)."""
    timeout_s = float(probe.get("timeoutSeconds", 1))
    try:
        if spec := probe.get("exec"):
            result = subprocess.run(
                argv(spec["command"]),
                env=dict(env),
                cwd=cwd,
                timeout=timeout_s,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            return result.returncode == 0
        if spec := probe.get("httpGet"):
            port = _probe_port(spec["port"], container)
            https = spec.get("scheme", "HTTP").upper() == "HTTPS"
            conn: http.client.HTTPConnection = (
                http.client.HTTPSConnection(POD_IP, port, timeout=timeout_s, context=_unverified_tls())
                if https
                else http.client.HTTPConnection(POD_IP, port, timeout=timeout_s)
            )
            try:
                headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
                conn.request("GET", spec.get("path", "/"), headers=headers)
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if spec := probe.get("tcpSocket"):
            with socket.create_connection((POD_IP, _probe_port(spec["port"], container)), timeout=timeout_s):
                return True
    except (OSError, subprocess.TimeoutExpired, http.client.HTTPException):
        return False
    raise PodConfigError(f"unsupported probe {sorted(probe)}")



"""Thin async wrappers over the (synchronous) kubernetes client: create-or-patch of owned children, status
patches, Secrets. Each call runs in a worker thread so that handlers never block the event loop."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from station_runtime.api.models import GROUP, VERSION

_api: client.ApiClient | None = None


def api() -> client.ApiClient:
    global _api
    if _api is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        _api = client.ApiClient()
    return _api


def _apply_sync(obj: dict[str, Any], namespace: str) -> None:
    kind, name = obj["kind"], obj["metadata"]["name"]
    core, apps = client.CoreV1Api(api()), client.AppsV1Api(api())
    ops: dict[str, tuple[Any, Any, Any]] = {
        "ServiceAccount": (core.read_namespaced_service_account, core.create_namespaced_service_account,
                           core.patch_namespaced_service_account),
        "Secret": (core.read_namespaced_secret, core.create_namespaced_secret, core.patch_namespaced_secret),
        "StatefulSet": (apps.read_namespaced_stateful_set, apps.create_namespaced_stateful_set,
                        apps.patch_namespaced_stateful_set),
    }
    read, create, patch = ops[kind]
    try:
        read(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        try:
            create(namespace, obj)
            return
        except ApiException as error2:
            if error2.status != 409:  # created meanwhile: patch it below
                raise
    patch(name, namespace, obj)


async def apply(obj: dict[str, Any], namespace: str) -> None:
    """Create the object, or patch it to match (idempotent: handlers may run twice)."""
    await asyncio.to_thread(_apply_sync, obj, namespace)


async def ready_replicas(name: str, namespace: str) -> int:
    def read() -> int:
        try:
            sts = client.AppsV1Api(api()).read_namespaced_stateful_set_status(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return 0
            raise
        return int(sts.status.ready_replicas or 0) if sts.status else 0

    return await asyncio.to_thread(read)


_NAMESPACE_TTL_S = 10.0
_namespaces: dict[str, tuple[float, dict[str, str], dict[str, str]]] = {}


async def namespace_labels(namespace: str) -> dict[str, str]:
    """A namespace's labels (which decide its org), cached for a few seconds: every handler asks."""
    return (await namespace_meta(namespace))[0]


async def namespace_meta(namespace: str) -> tuple[dict[str, str], dict[str, str]]:
    """A namespace's labels and annotations (its org, its org's NATS limits), cached for a few seconds."""
    cached = _namespaces.get(namespace)
    now = time.monotonic()
    if cached is not None and now - cached[0] < _NAMESPACE_TTL_S:
        return cached[1], cached[2]

    def read() -> tuple[dict[str, str], dict[str, str]]:
        ns = client.CoreV1Api(api()).read_namespace(namespace)
        meta = ns.metadata
        return dict((meta.labels if meta else None) or {}), dict((meta.annotations if meta else None) or {})

    labels, annotations = await asyncio.to_thread(read)
    _namespaces[namespace] = (now, labels, annotations)
    return labels, annotations


async def read_secret_key(namespace: str, name: str, key: str) -> str | None:
    """The value of one key of a Secret, or None if the Secret or key does not exist."""
    data = await read_secret(namespace, name)
    return None if data is None else data.get(key)


async def read_secret(namespace: str, name: str) -> dict[str, str] | None:
    def read() -> dict[str, str] | None:
        try:
            secret = client.CoreV1Api(api()).read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    return await asyncio.to_thread(read)


async def patch_secret_keys(namespace: str, name: str, values: dict[str, str | None],
                            labels: dict[str, str] | None = None) -> None:
    """Set (or with None remove) keys of a Secret, creating it if needed."""
    def write() -> None:
        core = client.CoreV1Api(api())
        data = {k: (base64.b64encode(v.encode()).decode() if v is not None else None) for k, v in values.items()}
        try:
            core.patch_namespaced_secret(name, namespace, {"data": data})
        except ApiException as error:
            if error.status != 404:
                raise
            body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "labels": labels or {}},
                    "data": {k: v for k, v in data.items() if v is not None}}
            core.create_namespaced_secret(namespace, body)  # type: ignore[arg-type]  # dicts are accepted

    await asyncio.to_thread(write)


async def patch_status(plural: str, namespace: str, name: str, status: dict[str, Any],
                       resource_version: str | None = None) -> bool:
    """Patch a custom resource's status; False if the resource is gone or (with ``resource_version``, a
    compare-and-set) changed since that version."""
    def write() -> bool:
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body)
            return True
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise

    return await asyncio.to_thread(write)


async def remove_annotations(plural: str, namespace: str, name: str, keys: Sequence[str]) -> None:
    """Remove annotations from a custom resource (a merge patch setting them to null); gone: nothing to do."""
    def write() -> None:
        body = {"metadata": {"annotations": dict.fromkeys(keys)}}
        try:
            client.CustomObjectsApi(api()).patch_namespaced_custom_object(GROUP, VERSION, namespace, plural, name,
                                                                          body)
        except ApiException as error:
            if error.status != 404:
                raise

    await asyncio.to_thread(write)


async def read_status(plural: str, namespace: str, name: str) -> tuple[dict[str, Any], str] | None:
    """A custom resource's status as stored now and its resourceVersion (None if the resource is gone)."""
    def read() -> tuple[dict[str, Any], str] | None:
        try:
            found: dict[str, Any] = client.CustomObjectsApi(api()).get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, namespace, plural, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(found.get("status") or {}), str(found["metadata"]["resourceVersion"])

    return await asyncio.to_thread(read)


async def list_custom(plural: str, namespace: str) -> list[dict[str, Any]]:
    """Every resource of a kind of ours in a namespace (their bodies)."""
    def read() -> list[dict[str, Any]]:
        found: dict[str, Any] = client.CustomObjectsApi(api()).list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, namespace, plural)
        return list(found.get("items") or [])

    return await asyncio.to_thread(read)


async def delete_custom(plural: str, namespace: str, name: str) -> None:
    def delete() -> None:
        try:
            client.CustomObjectsApi(api()).delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as error:
            if error.status != 404:
                raise

    await asyncio.to_thread(delete)


async def apply_config_map(namespace: str, name: str, data: dict[str, str]) -> None:
    def write() -> None:
        core = client.CoreV1Api(api())
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "station-lattice"}},
                                "data": data}
        try:
            core.create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]
        except ApiException as error:
            if error.status != 409:
                raise
            core.patch_namespaced_config_map(name, namespace, body)

    await asyncio.to_thread(write)

"""JWT mode end to end: one NATS account per org pushed by the operator, one least-privilege user per station;
two orgs work side by side and a station of one cannot see the other's work."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from kubernetes import client
from nats.aio.client import RawCredentials
from station_operator.orgs import LIMITS_ANNOTATION

from station_runtime.api.models import GROUP, VERSION
from station_runtime.natsauth import jwt
from station_runtime.natsio.embedded import EmbeddedNats
from station_runtime.station.creds import expires_at
from tests.support.kube_fixtures import KubeCluster
from tests.support.tenancy import sees_only_its_own_work
from tests.support.waiting import wait_sync

from .test_operator_e2e import MANIFESTS, Operator, apply, condition, crds, get  # noqa: F401

pytestmark = [pytest.mark.k8s, pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture
def jwt_lattice(kube_cluster: KubeCluster, crds: Any, tmp_path: Path) -> Iterator[tuple[str, str, list[str]]]:  # noqa: F811
    """An operator namespace bootstrapped with keys, a nats-server in operator mode trusting them, two org
    namespaces; yields (nats url, operator namespace, org namespaces)."""
    with kube_cluster.namespace("lattice-system") as system, kube_cluster.namespace("org-a") as a, \
            kube_cluster.namespace("org-b") as b:
        env = {**os.environ, "KUBECONFIG": str(kube_cluster.kubeconfig)}
        resolver = tmp_path / "jwt"
        out = subprocess.run([sys.executable, "-m", "station_runtime", "auth", "bootstrap", "-n", system,
                              "--resolver-dir", str(resolver)], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "created Secret" in out.stdout and "SEED" not in out.stdout.upper()
        again = subprocess.run([sys.executable, "-m", "station_runtime", "auth", "bootstrap", "-n", system,
                                "--resolver-dir", str(resolver)], env=env, capture_output=True, text=True, timeout=60)
        assert "kept Secret" in again.stdout  # idempotent: keys are never replaced
        config = client.CoreV1Api(crds).read_namespaced_config_map("lattice-nats-resolver", system)
        server = EmbeddedNats(tmp_path / "nats", sync_always=False, extra_config=config.data["resolver.conf"])
        asyncio.run(server.start())
        try:
            yield server.url, system, [a, b]
        finally:
            asyncio.run(server.stop())


def _annotate_limits(core: Any, namespace: str, limits: dict[str, int]) -> None:
    core.patch_namespace(namespace, {"metadata": {"annotations": {LIMITS_ANNOTATION: json.dumps(limits)}}})


def _account_limits(secrets: Any, system: str, org: str) -> dict[str, int]:
    data = secrets.read_namespaced_secret(f"lattice-org-{org}", system).data
    limits: dict[str, int] = jwt.decode(base64.b64decode(data["account-jwt"]).decode()).nats["limits"]
    return limits


def test_two_orgs_run_isolated_in_their_own_accounts(crds: Any, kube_cluster: KubeCluster,  # noqa: F811
                                                     jwt_lattice: tuple[str, str, list[str]], tmp_path: Path) -> None:
    url, system, orgs = jwt_lattice
    core = client.CoreV1Api(crds)
    # org-a's namespace limits its NATS account (as the lattice-org chart's natsLimits does).
    _annotate_limits(core, orgs[0], {"connections": 40, "jetstreamDiskBytes": 4 << 30})
    op = Operator(kube_cluster.kubeconfig, url, orgs[0], tmp_path / "operator.log")
    op.argv += ["-n", orgs[1]]
    op.env.update({"LATTICE_AUTH": "jwt", "LATTICE_OPERATOR_NAMESPACE": system})
    op.start()
    try:
        for org in orgs:
            apply(crds, org, MANIFESTS)
            apply(crds, org, f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata: {{name: job}}\n"
                             f"spec: {{agent: echo, input: 'for {org}'}}\n")
        for org in orgs:
            item = wait_sync(lambda org=org: (w := get(crds, org, "workitems", "job"))
                             and (w.get("status") or {}).get("phase") == "Succeeded" and w, timeout_s=90,
                             what=f"the WorkItem of {org} (operator log: {op.output()})")
            assert item["status"]["result"] == f"done: for {org}"
        secrets = client.CoreV1Api(crds)
        account_keys = {org: secrets.read_namespaced_secret(f"lattice-org-{org}", system).data["account-public-key"]
                        for org in orgs}
        assert account_keys[orgs[0]] != account_keys[orgs[1]]
        assert _account_limits(secrets, system, orgs[0])["conn"] == 40
        assert _account_limits(secrets, system, orgs[0])["disk_storage"] == 4 << 30
        assert _account_limits(secrets, system, orgs[1])["conn"] == -1
        # A changed annotation reaches the account within a resync (no restart): the server enforces it at once.
        _annotate_limits(core, orgs[0], {"connections": 30, "jetstreamDiskBytes": 4 << 30})
        wait_sync(lambda: _account_limits(secrets, system, orgs[0])["conn"] == 30, timeout_s=60,
                  what=f"the new limit in org-a's account JWT (operator log: {op.output()})")
        creds_secret = secrets.read_namespaced_secret("worker-nats", orgs[0])
        creds = base64.b64decode(creds_secret.data["worker-0.creds"]).decode()
        asyncio.run(_station_of_a_cannot_see_b(url, creds, orgs[0], orgs[1], tmp_path))
        # Station creds end (a day by default) ...
        end = expires_at(creds)
        assert end is not None and 0 < end - time.time() <= 24 * 3600
        # ... and scaling the Station down revokes the users of the removed replica: the server refuses them.
        gone = base64.b64decode(creds_secret.data["worker-1.creds"]).decode()
        asyncio.run(_connects(url, gone))
        client.CustomObjectsApi(crds).patch_namespaced_custom_object(
            GROUP, VERSION, orgs[0], "stations", "worker", {"spec": {"replicas": 1}})
        wait_sync(lambda: "worker-1.creds" not in (secrets.read_namespaced_secret("worker-nats", orgs[0]).data
                                                   or {}), timeout_s=60, what="worker-1's creds to go")
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            asyncio.run(_connects(url, gone))
    finally:
        op.stop()
    assert "SEED" not in op.output().upper() and "BEGIN NATS USER JWT" not in op.output()


async def _connects(url: str, creds: str) -> None:
    nc = await nats.connect(url, user_credentials=RawCredentials(creds), allow_reconnect=False,
                            max_reconnect_attempts=0, connect_timeout=5)
    await nc.close()


async def _station_of_a_cannot_see_b(url: str, creds: str, org_a: str, org_b: str, tmp: Path) -> None:
    from station_runtime.contract import subjects

    path = tmp / "a.creds"
    path.write_text(creds)
    errors: list[Exception] = []
    expected = [f'permissions violation for subscription to "lattice.v1.{org_b.lower()}.events.>"',
                f'permissions violation for publish to "lattice.v1.{org_a.lower()}.station.worker-1']
    both_refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        text = " ".join(str(e).lower() for e in errors)
        if all(e in text for e in expected):
            both_refused.set()

    nc = await nats.connect(url, user_credentials=str(path), inbox_prefix="_INBOX_worker-0", error_cb=on_error)
    try:
        await sees_only_its_own_work(nc.jetstream(), org_a, org_b)
        got: list[object] = []

        async def collect(msg: object) -> None:
            got.append(msg)

        await nc.subscribe(subjects.events_all(org_b), cb=collect)
        await nc.flush()
        # Publishing as another station of its own org is refused too.
        await nc.publish(subjects.work_assign(org_a, "worker-1"), b"{}")
        await nc.flush()
        await asyncio.wait_for(both_refused.wait(), 5)  # the server reports violations asynchronously
    finally:
        await nc.close()
    assert not got

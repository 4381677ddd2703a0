"""Two operator replicas on the test control plane, one active by a Lease: the active one killed with -9 mid-load
is replaced by the standby within the lease's duration, and every WorkItem (submitted before, during and after
the switch) is submitted once and mirrored to Succeeded."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from station_runtime.api.models import GROUP, VERSION
from station_runtime.client import LatticeClient
from station_runtime.natsio.connect import NatsSettings
from tests.operator.test_operator_e2e import MANIFESTS, Operator, apply, condition, crds, get
from tests.support.kube_fixtures import KubeCluster
from tests.support.waiting import wait_sync

__all__ = ["crds"]  # the fixture, shared with the operator's e2e tests

pytestmark = [pytest.mark.k8s, pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(240)]
LEASE_S = 3.0
LEASE = "station-lattice-operator"
#: Where ``make bench`` finds the failover time measured here (``operator_failover_s`` in latest.json).
FAILOVER_FILE_ENV = "LATTICE_FAILOVER_FILE"


def holder(api: Any, namespace: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
    except client.exceptions.ApiException as error:
        if error.status == 404:
            return None
        raise
    return (lease.spec.holder_identity or None) if lease.spec else None


def work_items(api: Any, namespace: str, names: range) -> None:
    for i in names:
        apply(api, namespace, f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata: {{name: job-{i}}}\n"
                              f"spec: {{agent: echo, input: 'task {i}'}}\n")


def succeeded(api: Any, namespace: str, names: range) -> list[dict[str, Any]] | None:
    items = [get(api, namespace, "workitems", f"job-{i}") for i in names]
    return items if all((w.get("status") or {}).get("phase") == "Succeeded" for w in items) else None


async def submissions(nats_url: str, org: str) -> Counter[str]:
    async with LatticeClient(NatsSettings(url=nats_url), org) as lattice:
        return Counter([e.subject or "" async for e in lattice.events(category="work")
                        if e.short_type == "work.submitted"])


def test_a_killed_active_operator_is_replaced_and_no_work_item_is_lost_or_doubled(
        kube_cluster: KubeCluster, crds: Any, nats_url: str, k8s_namespace: str, tmp_path: Path) -> None:
    ops: dict[str, Operator] = {}
    for name in ("op-a", "op-b"):
        op = Operator(kube_cluster.kubeconfig, nats_url, k8s_namespace, tmp_path / f"{name}.log")
        op.env.update({"LATTICE_LEADER_ELECTION": "true", "LATTICE_LEADER_LEASE": str(LEASE_S),
                       "LATTICE_OPERATOR_ID": name, "LATTICE_OPERATOR_NAMESPACE": k8s_namespace})
        ops[name] = op.start()
    try:
        active = wait_sync(lambda: holder(crds, k8s_namespace), timeout_s=30, what="a leader")
        standby = next(n for n in ops if n != active)
        apply(crds, k8s_namespace, MANIFESTS)
        wait_sync(lambda: (s := get(crds, k8s_namespace, "stations", "worker")) and condition(s, "Ready") == "True",
                  timeout_s=60, what=f"Station worker Ready (active {active}: {ops[active].output()})")
        assert "standing by" in ops[standby].output()
        assert "leading" not in ops[standby].output()  # it ran no handler

        work_items(crds, k8s_namespace, range(0, 10))
        wait_sync(lambda: succeeded(crds, k8s_namespace, range(0, 10)), timeout_s=60, what="the first ten")
        work_items(crds, k8s_namespace, range(10, 20))  # in flight as the active operator dies
        proc = ops[active].proc
        assert proc is not None
        proc.kill()
        killed_at = time.monotonic()
        work_items(crds, k8s_namespace, range(20, 30))  # created with no operator acting
        wait_sync(lambda: holder(crds, k8s_namespace) == standby, timeout_s=LEASE_S * 5,
                  what=f"{standby} to take over ({ops[standby].output()})")
        failover_s = time.monotonic() - killed_at
        items = wait_sync(lambda: succeeded(crds, k8s_namespace, range(0, 30)), timeout_s=90,
                          what=f"all thirty Succeeded ({ops[standby].output()})")
        done_s = time.monotonic() - killed_at

        # A rolling update: the killed one comes back as a standby; the active one, told to stop, gives the
        # lease up on its way out, and the standby takes it at once rather than a lease later.
        ops[active] = Operator(kube_cluster.kubeconfig, nats_url, k8s_namespace, tmp_path / f"{active}-2.log")
        ops[active].env.update(ops[standby].env | {"LATTICE_OPERATOR_ID": active})
        ops[active].start()
        wait_sync(lambda: "standing by" in ops[active].output(), timeout_s=30, what=f"{active} standing by")
        stopped_at = time.monotonic()
        ops[standby].stop()
        wait_sync(lambda: holder(crds, k8s_namespace) == active, timeout_s=LEASE_S * 5, what=f"{active} leading")
        handover_s = time.monotonic() - stopped_at
        assert "given up" in ops[standby].output()
        work_items(crds, k8s_namespace, range(30, 32))
        wait_sync(lambda: succeeded(crds, k8s_namespace, range(30, 32)), timeout_s=60, what="work after the update")
    finally:
        for op in ops.values():
            op.stop(kill=True)
    print(f"operator failover: lease taken over after {failover_s:.2f}s, last WorkItem Succeeded after "
          f"{done_s:.2f}s (lease {LEASE_S:g}s); handover on SIGTERM {handover_s:.2f}s")
    if target := os.environ.get(FAILOVER_FILE_ENV):
        Path(target).write_text(json.dumps({"failover_s": round(failover_s, 2), "all_done_s": round(done_s, 2),
                                            "handover_s": round(handover_s, 2), "lease_s": LEASE_S}))
    assert [w["status"]["result"] for w in items] == [f"done: task {i}" for i in range(30)]
    # Each WorkItem became one piece of work, submitted once, whichever operator saw it (the record's create is a
    # compare-and-set on "no such key": a second submission finds the first). An item the killed operator had
    # just created may miss its `submitted` event (events follow the write, without waiting): at most once.
    work_ids = [w["status"]["workId"] for w in items]
    assert len(set(work_ids)) == 30
    submitted = asyncio.run(submissions(nats_url, k8s_namespace))
    assert all(submitted[w] <= 1 for w in work_ids), submitted
    calm = work_ids[:10] + work_ids[20:]  # not in flight when the operator was killed
    assert {w: submitted[w] for w in calm} == dict.fromkeys(calm, 1)
    # The standby takes over one lease after the last renewal: at most a lease and a retry after the kill.
    assert failover_s <= LEASE_S + LEASE_S / 7.5 + 2.0, failover_s
    assert handover_s < LEASE_S, handover_s  # given up, not expired


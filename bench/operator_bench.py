"""The operator scenario, on the test control plane (etcd + kube-apiserver + kube-controller-manager, station pods
run by the process kubelet) and a real nats-server:

* Station apply -> Ready (both replicas heartbeating in the lattice);
* WorkItem apply -> status Succeeded, one at a time (p50/p99 over ``sequential``);
* ``burst`` WorkItems applied at once -> all Succeeded (drain time), and the operator's RSS while it holds them.

Run: ``python -m bench.operator_bench [--sequential 50] [--burst 500]`` (prints JSON). Needs the control-plane
binaries (``make k8s-bin``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from kubernetes import client

from station_runtime.api.models import GROUP, VERSION
from station_runtime.natsio.embedded import EmbeddedNats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.controlplane import ControlPlane, find_binaries
from tests.support.crds import install_crds
from tests.support.kube_fixtures import new_api_client
from tests.support.kubelet import ProcessKubelet


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


def _work_item(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkItem", "metadata": {"name": name},
            "spec": {"agent": "echo", "input": "x" * 100}}


def _phase(custom: Any, ns: str, name: str) -> str | None:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "workitems", name)
    return (obj.get("status") or {}).get("phase")


def _wait(check: Any, timeout_s: float, poll_s: float = 0.01) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("timed out")
        time.sleep(poll_s)
    return time.perf_counter() - start


def run(sequential: int, burst: int) -> dict[str, Any]:
    binaries = find_binaries()
    if binaries is None:
        raise SystemExit("no control-plane binaries: run `make k8s-bin`")
    tmp = Path(tempfile.mkdtemp(prefix="lattice-opbench-"))
    results: dict[str, Any] = {}
    nats = EmbeddedNats(tmp / "nats", sync_always=True)
    asyncio.run(nats.start())
    try:
        with ControlPlane(binaries) as plane:
            kubelet = ProcessKubelet(new_api_client(plane.kubeconfig), tmp / "kubelet",
                                     bind_default=not plane.run_scheduler)
            kubelet.start()
            api = new_api_client(plane.kubeconfig)
            install_crds(api)
            core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
            ns = "bench"
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            _wait(lambda: bool(core.list_namespaced_service_account(ns).items), 30)
            env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "LATTICE_STATION_HEALTH_PORT": "none",
                   "LATTICE_RESYNC": "0.5", "LATTICE_STATION_HEARTBEAT": "1", "LATTICE_WORK_RESYNC": "30"}
            log = open(tmp / "operator.log", "wb")  # noqa: SIM115
            op = subprocess.Popen([sys.executable, "-m", "station_runtime", "--nats", nats.url, "operator", "-n", ns,
                                   "--liveness-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, "agents", {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "Agent", "metadata": {"name": "echo"},
                    "spec": {"model": {"provider": "echo"}}})
                t0 = time.perf_counter()
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, "stations", {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "Station", "metadata": {"name": "worker"},
                    "spec": {"replicas": 2, "maxConcurrency": 16}})

                def station_ready() -> bool:
                    obj = cast(dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, ns, "stations",
                                                                                   "worker"))
                    conds = (obj.get("status") or {}).get("conditions") or []
                    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

                _wait(station_ready, 120, 0.05)
                results["operator_station_ready_s"] = round(time.perf_counter() - t0, 3)
                latencies = []
                for i in range(sequential):
                    name = f"seq-{i}"
                    start = time.perf_counter()
                    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "workitems", _work_item(name))
                    _wait(lambda name=name: _phase(custom, ns, name) == "Succeeded", 30)
                    latencies.append((time.perf_counter() - start) * 1e6)
                results["operator_workitem_p50_us"] = round(statistics.median(latencies))
                results["operator_workitem_p99_us"] = round(_pct(latencies, 0.99))
                start = time.perf_counter()
                for i in range(burst):
                    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "workitems", _work_item(f"burst-{i}"))
                results["operator_burst_apply_s"] = round(time.perf_counter() - start, 2)
                peak = _rss_mb(op.pid)

                def drained() -> bool:
                    nonlocal peak
                    peak = max(peak, _rss_mb(op.pid))
                    listed = cast(dict[str, Any], custom.list_namespaced_custom_object(GROUP, VERSION, ns,
                                                                                       "workitems"))
                    items = listed["items"]
                    done = sum(1 for w in items if (w.get("status") or {}).get("phase") == "Succeeded")
                    return done >= burst + sequential

                _wait(drained, 600, 0.5)
                results["operator_burst_drained_s"] = round(time.perf_counter() - start, 2)
                results["operator_burst_items"] = burst
                results["operator_rss_mb_with_items"] = round(max(peak, _rss_mb(op.pid)), 1)
            finally:
                op.terminate()
                try:
                    op.wait(30)
                except subprocess.TimeoutExpired:
                    op.kill()
                    op.wait()
                    results["operator_stop_timed_out"] = True
                log.close()
                kubelet.stop()
    finally:
        asyncio.run(nats.stop())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=50)
    parser.add_argument("--burst", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(run(args.sequential, args.burst), indent=2))


if __name__ == "__main__":
    main()

"""The ``operator`` scenario of the runner: bench/operator_bench.py on the test control plane, in a thread (it
starts its own control plane, process kubelet, nats-server and operator process)."""

from __future__ import annotations

import asyncio

from bench.common import Skipped
from bench.context import RunContext


async def run(ctx: RunContext) -> None:
    from tests.support.controlplane import find_binaries

    if find_binaries() is None:
        raise Skipped("no Kubernetes control-plane binaries: run `make k8s-bin`")
    from bench.operator_bench import run as run_operator

    sequential, burst = (50, 500) if ctx.mode.name == "full" else (10, 50)
    results = await asyncio.to_thread(run_operator, sequential, burst)
    ctx.record("operator", results)
    ctx.results["operator_workitem_p50_ms"] = round(results["operator_workitem_p50_us"] / 1000, 1)
    ctx.results["operator_workitem_p99_ms"] = round(results["operator_workitem_p99_us"] / 1000, 1)
    ctx.results["operator_station_ready_s"] = results["operator_station_ready_s"]
    ctx.results["operator_rss_mb_500_workitems"] = results["operator_rss_mb_with_items"]
    ctx.results["operator_500_drained_s"] = results["operator_burst_drained_s"]

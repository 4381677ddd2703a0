"""The pause in progress when a server of a three-node JetStream cluster is killed with -9 under load: measured by
the fault test itself (``tests/cluster/test_cluster_faults.py``: 600 items on three stations, kill -9 of the meta
leader, then of the work bucket's leader, then of a follower), run here as a child and read from the file it
writes. A leader loss costs at least one JetStream election (4-9 s, nats-server's Raft election timeout, not
configurable); the median of the runs' worst leader loss is ``leader_loss_pause_s``."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.common import Skipped
from bench.context import RunContext

TEST = "tests/cluster/test_cluster_faults.py"
FAILOVER_TEST = "tests/operator/test_operator_failover.py"
ROOT = Path(__file__).resolve().parent.parent


async def _measured_by(ctx: RunContext, test: str, variable: str, tag: str) -> dict[str, float]:
    """Run ``test`` as a child with ``variable`` naming the file it writes its measurement to; the measurement."""
    out = ctx.workdir / f"{tag}.json"
    log = ctx.workdir / f"{tag}.log"
    env = {**os.environ, variable: str(out)}
    with open(log, "wb") as logf:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider", "--basetemp",
            str(ctx.workdir / tag), cwd=ROOT, env=env, stdout=logf, stderr=asyncio.subprocess.STDOUT)
        code = await proc.wait()
    if code == 0 and not out.exists():
        raise Skipped(f"{test} was skipped (see {log})")
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{test} failed (exit {code}):\n{tail}")
    measured: dict[str, float] = json.loads(out.read_text())
    return measured


async def _once(ctx: RunContext, n: int) -> dict[str, float]:
    return await _measured_by(ctx, TEST, "LATTICE_FAULT_PAUSES_FILE", f"cluster-faults-{n}")


async def run(ctx: RunContext) -> None:
    runs = 3 if ctx.mode.name == "full" else 1
    measured = [await _once(ctx, n) for n in range(runs)]
    by_role: dict[str, list[float]] = {}
    for pauses in measured:
        for label, seconds in pauses.items():
            by_role.setdefault(label.split(" (")[0], []).append(seconds)
    worst_leader = [max(s for label, s in p.items() if "leader" in label) for p in measured]
    detail: dict[str, Any] = {f"{role}_pause_s_median": round(statistics.median(v), 2) for role, v in by_role.items()}
    detail["runs"] = measured
    ctx.record("cluster_faults", detail)
    ctx.results["leader_loss_pause_s"] = round(statistics.median(worst_leader), 2)


async def run_failover(ctx: RunContext) -> None:
    """Two operator replicas on the test control plane, the active one killed with -9 (3 s lease): the time
    until the standby holds the lease, the median of three runs in --full."""
    runs = 3 if ctx.mode.name == "full" else 1
    measured = [await _measured_by(ctx, FAILOVER_TEST, "LATTICE_FAILOVER_FILE", f"failover-{n}") for n in range(runs)]
    ctx.record("operator_failover", {"runs": measured,
                                     "all_done_s_median": statistics.median(m["all_done_s"] for m in measured)})
    ctx.results["operator_failover_s"] = round(statistics.median(m["failover_s"] for m in measured), 2)

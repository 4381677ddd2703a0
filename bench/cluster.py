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

from bench.context import RunContext

TEST = "tests/cluster/test_cluster_faults.py"
ROOT = Path(__file__).resolve().parent.parent


async def _once(ctx: RunContext, n: int) -> dict[str, float]:
    out = ctx.workdir / f"cluster-pauses-{n}.json"
    log = ctx.workdir / f"cluster-faults-{n}.log"
    env = {**os.environ, "LATTICE_FAULT_PAUSES_FILE": str(out)}
    with open(log, "wb") as logf:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider", "--basetemp",
            str(ctx.workdir / f"cluster-{n}"), cwd=ROOT, env=env, stdout=logf, stderr=asyncio.subprocess.STDOUT)
        code = await proc.wait()
    if code != 0 or not out.exists():
        raise RuntimeError(f"the cluster fault test failed (exit {code}); see {log}")
    pauses: dict[str, float] = json.loads(out.read_text())
    return pauses


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

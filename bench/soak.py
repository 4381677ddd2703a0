"""A user's day, compressed: ``lattice up`` (its nats-server, controller and three stations) and a separate
submitting process, run for tens of thousands of items.

* ``contention``: 5,000 items at 200 in flight with no retry allowed, on 3 stations of 4 run slots and a queue of
  32 each (108 places): the attempts that contention spends (target 0) and the items it escalates (target 0).
* ``soak``: then rounds of 10,000 items at 200 in flight; after each, the RSS of the submitting process, of
  ``lattice up`` and of nats-server. Memory that grows with the work done shows as a slope; it must be level.
* ``idle_controller``: a ``lattice controller run`` process over an org holding 0, then 20,000 finished records,
  idle: its share of a core (it used to read and decode every record every second: 60 % with 15,000).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from bench.common import ROOT, Child, cpu_s, python, rss_mb
from bench.context import RunContext, log
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase, WorkRecord, utcnow
from station_runtime.contract.specs import WorkItemSpec
from station_runtime.local.auth import admin_creds_path
from station_runtime.natsio.connect import NatsSettings

MANIFESTS = """\
apiVersion: lattice.station.dev/v1alpha1
kind: Station
metadata: {name: worker}
spec: {replicas: 3, maxConcurrency: 4}
---
apiVersion: lattice.station.dev/v1alpha1
kind: Agent
metadata: {name: echo}
spec: {model: {provider: echo}}
"""


class Up:
    """``lattice up`` as a user starts it (no fsync: the other scenarios skip durability too)."""

    def __init__(self, ctx: RunContext) -> None:
        root = ctx.workdir / f"soak-{uuid.uuid4().hex[:6]}"
        (root / "manifests").mkdir(parents=True)
        (root / "manifests" / "lattice.yaml").write_text(MANIFESTS)
        self.root = root
        self.env = {"XDG_STATE_HOME": str(root / "xdg")}
        self.child = Child([python(), "-m", "station_runtime", "--org", "soak", "up", "-f", str(root / "manifests"),
                            "--state-dir", str(root / "state"), "--port", "0", "--no-sync"],
                           root / "up.log", env=self.env)

    async def url(self, timeout_s: float = 60.0) -> str:
        state = self.root / "xdg" / "station-lattice" / "current.json"
        deadline = time.monotonic() + timeout_s
        while not state.exists():
            if time.monotonic() > deadline or not self.child.alive():
                raise RuntimeError(f"lattice up did not start: {self.child.tail()}")
            await asyncio.sleep(0.1)
        return str(json.loads(state.read_text())["url"])

    def nats_pid(self) -> int:
        ports = list((self.root / "state" / "nats" / "ports").glob("*.ports"))
        return int(ports[0].stem.rsplit("_", 1)[1])


async def run(ctx: RunContext) -> None:
    full = ctx.mode.name == "full"
    contention_items = 5000 if full else 1000
    round_items, rounds = (10_000, 3) if full else (2_000, 2)
    up = Up(ctx)
    try:
        url = await up.url()
        plan = [{"items": contention_items, "inflight": 200, "retries": 0}] + \
            [{"items": round_items, "inflight": 200, "retries": 2}] * rounds
        samples: list[dict[str, float | None]] = [{"items_done": 0, "client_mb": None,
                                                   "lattice_up_mb": round(up.child.rss_mb(), 1),
                                                   "nats_server_mb": round(rss_mb(up.nats_pid()), 1)}]
        client = await asyncio.create_subprocess_exec(
            python(), "-m", "bench.soak_client", url, "soak", json.dumps(plan),
            str(admin_creds_path(up.root / "state", "soak")), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, cwd=str(ROOT))
        assert client.stdout is not None
        results = []
        done = 0
        for _ in plan:
            line = await asyncio.wait_for(client.stdout.readline(), 600)
            if not line:
                raise RuntimeError("the soak client ended early")
            result = json.loads(line)
            results.append(result)
            done += result["items"]
            samples.append({"items_done": done, "client_mb": result["rss_mb"],
                            "lattice_up_mb": round(up.child.rss_mb(), 1),
                            "nats_server_mb": round(rss_mb(up.nats_pid()), 1)})
            log.info("soak: %d items, %s", done, samples[-1])
        await client.wait()
        # The same processes after a quiet spell: what is held (records retained, caches) and what was in flight.
        await asyncio.sleep(20.0 if full else 3.0)
        idle = {"client_mb": None, "lattice_up_mb": round(up.child.rss_mb(), 1),
                "nats_server_mb": round(rss_mb(up.nats_pid()), 1)}
    finally:
        up.child.stop(timeout_s=30)
    contention, soak_rounds = results[0], results[1:]
    ctx.record("contention", {"items": contention["items"], "inflight": 200, "retries_allowed": 0,
                              "extra_attempts": contention["extra_attempts"], "escalated": contention["escalated"],
                              "contended_placements": contention["contended_placements"],
                              "per_s": contention["per_s"]})
    # RSS per 10,000 items: the growth over the last round, once caches and buffers have filled (nats-server's
    # stay level from ~25,000 items on; every sample is in the details).
    per_10k: dict[str, float] = {}
    first, last = samples[-2], samples[-1]
    span = float(last["items_done"] or 0) - float(first["items_done"] or 0)
    for who in ("client", "lattice_up", "nats_server"):
        per_10k[who] = round((float(last[f"{who}_mb"] or 0) - float(first[f"{who}_mb"] or 0)) / (span / 10_000), 1)
    ctx.record("soak", {"rounds": soak_rounds, "samples": samples, "after_idle": idle,
                        "growth_mb_per_10k_items": per_10k})
    ctx.results.update(soak_rss_mb_per_10k_items=per_10k,
                       contention_attempts_spent_5000_items=contention["extra_attempts"])


async def write_finished_records(client: LatticeClient, count: int) -> None:
    """``count`` Succeeded records, written as a station's outcome would be (in batches: a few seconds for 20k).
    Also used by the witness's idle test."""
    store = await client.work_store()
    now = utcnow()
    template = WorkRecord(org=client.org, work_id="x", spec=WorkItemSpec(agent="echo", input="done"),
                          phase=WorkPhase.SUCCEEDED, attempt=1, station_id="gone", result="done", created_at=now,
                          updated_at=now, started_at=now, finished_at=now)
    for start in range(0, count, 500):
        batch = [template.model_copy(update={"work_id": f"old-{i}"}) for i in range(start, min(start + 500, count))]
        await asyncio.gather(*(store.create(r) for r in batch))


async def run_idle_controller(ctx: RunContext) -> None:
    window_s = 10.0 if ctx.mode.name == "full" else 3.0
    out: dict[str, Any] = {}
    for records in (0, 20_000):
        org = f"idle{records}x{uuid.uuid4().hex[:4]}"
        async with LatticeClient(NatsSettings(url=ctx.nats_url), org, create_state=True) as client:
            await client.state()
            await write_finished_records(client, records)
        child = Child([python(), "-m", "station_runtime", "--nats", ctx.nats_url, "--org", org, "controller", "run"],
                      ctx.workdir / f"{org}-controller.log")
        try:
            await asyncio.sleep(3.0)  # started, snapshot read: the idle period begins
            before, t0 = cpu_s(child.pid), time.monotonic()
            await asyncio.sleep(window_s)
            pct = 100.0 * (cpu_s(child.pid) - before) / (time.monotonic() - t0)
            out[f"{records}_records"] = {"cpu_pct": round(pct, 2), "rss_mb": round(child.rss_mb(), 1)}
        finally:
            child.stop()
    ctx.record("idle_controller", {"window_s": window_s, **out})
    ctx.results.update(idle_controller_cpu_pct_0_records=out["0_records"]["cpu_pct"],
                       idle_controller_cpu_pct_20k_records=out["20000_records"]["cpu_pct"])

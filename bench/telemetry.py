"""What telemetry costs: the lattice work p50 (3 stations) with tracing off and with every span sampled and
exported to a real OpenTelemetry Collector; and one ``/metrics`` scrape of a controller that sees 50 stations.

Tracing is per process (the SDK is installed once), so both arms run in child client processes with their own
stations, interleaved off/on, median of three rounds: the ratio compares like with like in one run. The Collector
(``scripts/otelcol-bin.sh``) writes what it receives to /dev/null: its CPU is on the same 2 cores, as a sidecar's
would be, which makes the figure conservative.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.common import Child, Skipped, free_port, python, stop_all
from bench.context import RunContext, log
from bench.lattice import agent
from station_runtime.client import LatticeClient
from station_runtime.contract.codec import encode
from station_runtime.contract.messages import StationRecord, utcnow
from station_runtime.natsio.connect import NatsSettings

CACHE = Path(os.environ.get("LATTICE_CACHE", Path.home() / ".cache" / "station-lattice"))
STATIONS = 3
SCRAPE_STATIONS = 50


def _collector() -> Path:
    ready = [p for p in sorted(CACHE.glob("otelcol/*/otelcol-lattice")) if (p.parent / ".complete").exists()]
    if not ready:
        raise Skipped("no OpenTelemetry Collector: run `make telemetry-bin` (scripts/otelcol-bin.sh)")
    return ready[-1]


def _untraced_env() -> dict[str, str]:
    return {k: "" for k in os.environ if k.startswith("OTEL_")}


async def _arm(ctx: RunContext, env: dict[str, str], n: int, warmup: int, tag: str) -> dict[str, Any]:
    org = f"benchtel{tag}{uuid.uuid4().hex[:6]}"
    client = LatticeClient(NatsSettings(url=ctx.nats_url), org, create_state=True)
    children: list[Child] = []
    try:
        await client.connect()
        await client.state()
        await client.put_agent(agent("echo"))
        for i in range(STATIONS):
            children.append(Child([python(), "-m", "station_runtime", "--nats", ctx.nats_url, "--org", org,
                                   "--log-level", "warning", "station", "run", "--station-id", f"s{i}"],
                                  ctx.workdir / f"{org}-s{i}.log", env=env))
        await client.wait_for_stations(STATIONS, agent="echo", timeout_s=60)
        done = await asyncio.to_thread(
            subprocess.run, [python(), "-m", "bench.telemetry_client", "--nats", ctx.nats_url, "--org", org,
                             "--n", str(n), "--warmup", str(warmup)],
            capture_output=True, text=True, timeout=300, env={**os.environ, **env}, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the benchmark client failed: {done.stderr[-1500:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    finally:
        await client.close()
        await asyncio.to_thread(stop_all, children)


async def run_tracing(ctx: RunContext) -> None:
    m = ctx.mode
    binary = _collector()
    port = free_port()
    config = ctx.workdir / "otelcol-bench.json"
    config.write_text(json.dumps({
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{port}"}}}},
        "exporters": {"file": {"path": "/dev/null"}},
        "service": {"telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                    "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}}}}))
    collector = Child([str(binary), "--config", f"file:{config}"], ctx.workdir / "otelcol-bench.log")
    traced_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_TRACES_SAMPLER": "always_on",
                  "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    rounds = 3 if m.name in ("full", "quick") else 1
    n = min(max(m.latency_n, 300), 1000) if m.name != "smoke" else m.latency_n
    arms: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        await asyncio.sleep(0.5)  # the Collector binds its port; the first exports retry if it is slower
        for r in range(rounds):
            for name, env in (("off", _untraced_env()), ("on", traced_env)):
                stats = await _arm(ctx, env, n, m.warmup, f"{name}{r}")
                if (name == "on") != bool(stats.get("traced")):
                    raise RuntimeError(f"the {name} arm's client traced={stats.get('traced')}")
                arms[name].append(stats)
                log.info("tracing %s, round %d: p50 %.0f us, p99 %.0f us", name, r + 1, stats["p50_us"],
                         stats["p99_us"])
    finally:
        collector.stop()
    med = {name: {k: statistics.median(s[k] for s in runs) for k in ("p50_us", "p99_us")}
           for name, runs in arms.items()}
    added = med["on"]["p50_us"] / med["off"]["p50_us"] - 1
    ctx.results["lattice_work_p50_us_traced"] = round(med["on"]["p50_us"], 1)
    ctx.record("tracing_cost", {
        "rounds": rounds, "n_per_arm": n, "stations": STATIONS,
        "untraced_p50_us": round(med["off"]["p50_us"], 1), "untraced_p99_us": round(med["off"]["p99_us"], 1),
        "traced_p50_us": round(med["on"]["p50_us"], 1), "traced_p99_us": round(med["on"]["p99_us"], 1),
        "traced_p50_added_pct": round(added * 100, 1), "target_pct": 15,
        "runs": arms})


def _get(url: str) -> bytes:
    return bytes(urllib.request.urlopen(url, timeout=10).read())


async def run_scrape(ctx: RunContext) -> None:
    """A controller's /metrics with 50 registered stations (their records written as heartbeats would be, so
    that the controller's directory and gauges hold 50 of each) and some finished work."""
    org = f"benchscrape{uuid.uuid4().hex[:6]}"
    port = free_port()
    client = LatticeClient(NatsSettings(url=ctx.nats_url), org, create_state=True)
    controller: Child | None = None
    try:
        await client.connect()
        state = await client.state()
        now = utcnow()
        for i in range(SCRAPE_STATIONS):
            record = StationRecord(org=org, station_id=f"s{i:02d}", capacity=4, load=i % 5 if i % 5 < 4 else 0,
                                   agents=["echo"], heartbeat_interval_s=30, started_at=now, last_heartbeat=now)
            await state.stations.put(record.station_id, encode(record))
        controller = Child([python(), "-m", "station_runtime", "--nats", ctx.nats_url, "--org", org,
                            "--log-level", "warning", "controller", "run", "--metrics-port", str(port)],
                           ctx.workdir / f"{org}-controller.log")
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:
            try:
                text = (await asyncio.to_thread(_get, url)).decode()
                if text.count("lattice_station_heartbeat_age_seconds{") >= SCRAPE_STATIONS:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the controller's /metrics never showed 50 stations")
            await asyncio.sleep(0.1)
        times: list[float] = []
        size = 0
        for _ in range(30):
            t0 = time.perf_counter()
            size = len(await asyncio.to_thread(_get, url))
            times.append(time.perf_counter() - t0)
    finally:
        await client.close()
        if controller is not None:
            controller.stop()
    ms = statistics.median(times) * 1000
    ctx.results["metrics_scrape_ms_50_stations"] = round(ms, 2)
    ctx.record("metrics_scrape", {"stations": SCRAPE_STATIONS, "scrapes": len(times), "median_ms": round(ms, 2),
                                  "max_ms": round(max(times) * 1000, 2), "bytes": size})

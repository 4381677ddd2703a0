"""The lattice: synchronous invoke, async work (submit -> auction -> run -> result) with 1..50 stations,
throughput with 4 stations, recovery after a SIGKILL, and the RSS of an idle station.

Stations are real ``lattice station run`` processes (uvloop, as in production); the client (LatticeClient, the
same code the CLI uses) runs in the runner's process. The echo agent returns its input: the no-op task.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from bench.common import PAYLOAD, Child, closed_loop, cpu_s, percentile, python, sample, stop_all, summary
from bench.context import RunContext, log
from bench.trace import trace
from station_runtime.api.models import Agent, AgentSpec, ModelSpec, ObjectMeta, WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.state import StateLimits
from station_runtime.work.auction import AuctionConfig
from station_runtime.work.controller import WorkController
from station_runtime.work.policy import WitnessPolicy

HEARTBEAT_S = 2.0
#: Recovery uses a faster beat so that a trial takes seconds; the target is stated in beats anyway.
RECOVERY_HEARTBEAT_S = 1.0
RECOVERY_WITNESS_INTERVAL_S = 0.2


def agent(name: str, **params: Any) -> Agent:
    return Agent(metadata=ObjectMeta(name=name), spec=AgentSpec(model=ModelSpec(provider="echo", params=params)))


class Lattice:
    """An org with ``count`` station processes hosting the echo agent, and a client connected to it."""

    def __init__(self, ctx: RunContext, count: int, *, heartbeat_s: float = HEARTBEAT_S, max_concurrency: int = 4,
                 tag: str = "") -> None:
        self.ctx = ctx
        self.count = count
        self.heartbeat_s = heartbeat_s
        self.max_concurrency = max_concurrency
        self.org = f"bench{tag}{uuid.uuid4().hex[:6]}"
        self.children: list[Child] = []
        self.client = LatticeClient(NatsSettings(url=ctx.nats_url), self.org, create_state=True,
                                    limits=StateLimits(presence_ttl_s=heartbeat_s * 3))

    def start_station(self, station_id: str) -> Child:
        argv = [python(), "-m", "station_runtime", "--nats", self.ctx.nats_url, "--org", self.org,
                "--log-level", "warning", "station", "run", "--station-id", station_id,
                "--heartbeat-interval", str(self.heartbeat_s), "--max-concurrency", str(self.max_concurrency)]
        child = Child(argv, self.ctx.workdir / f"{self.org}-{station_id}.log")
        self.children.append(child)
        return child

    async def __aenter__(self) -> Lattice:
        await self.client.connect()
        await self.client.state()
        await self.client.put_agent(agent("echo"))
        await self.client.put_agent(agent("slow", delaySeconds=30, steps=30))
        t0 = time.monotonic()
        for i in range(self.count):
            self.start_station(f"s{i}")
        try:
            await self.client.wait_for_stations(self.count, agent="echo", timeout_s=60 + self.count * 2)
        except Exception:
            dead = [c for c in self.children if not c.alive()]
            detail = f"\n{dead[0].tail()}" if dead else ""
            raise RuntimeError(f"{self.count} stations did not come up{detail}") from None
        log.info("%d station process(es) up in %.1fs", self.count, time.monotonic() - t0)
        # The last ones to register are still finishing their start (2 cores for 50 processes): let them settle.
        await asyncio.sleep(min(0.05 * self.count, 3.0))
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.close()
        await asyncio.to_thread(stop_all, self.children)

    async def work_once(self) -> None:
        record = await self.client.submit(WorkItemSpec(agent="echo", input=PAYLOAD), watch=True)
        final = await self.client.wait_work(record.work_id, timeout_s=30)
        if final.phase != WorkPhase.SUCCEEDED:
            raise RuntimeError(f"work {final.work_id} ended {final.phase}: {final.reason}")

    async def invoke_once(self) -> None:
        await self.client.invoke(PAYLOAD, agent="echo", timeout_s=30)


def _auction_stats(client: LatticeClient, since: int) -> dict[str, Any]:
    auctioneer = client._auctioneer
    if auctioneer is None:
        return {}
    # getattr: the runner also measures older commits (before/after comparisons), which lack some counters.
    closes = list(getattr(auctioneer, "close_times_s", []))[since:]
    bids = list(auctioneer.last_bid_counts)[since:]
    if not closes:
        return {}
    return {"auction_close_p50_us": round(percentile(closes, 50), 1),
            "auction_close_p99_us": round(percentile(closes, 99), 1),
            "bids_per_auction": round(sum(bids) / len(bids), 2) if bids else None}


def _counters(client: LatticeClient) -> tuple[int, int, int]:
    a = client._auctioneer
    return (0, 0, 0) if a is None else (a.auctions, getattr(a, "offers", 0), getattr(a, "offers_declined", 0))


def _placement_stats(client: LatticeClient, before: tuple[int, int, int], offers_since: int) -> dict[str, Any]:
    """How the items were placed: offered to the expected winner (and how long its answer took), or auctioned."""
    auctions, offers, declined = (now - then for now, then in zip(_counters(client), before, strict=True))
    times = list(getattr(client._auctioneer, "offer_times_s", []))[offers_since:]
    out: dict[str, Any] = {"auctions": auctions, "offers": offers, "offers_declined": declined}
    if times:
        out.update(offer_answer_p50_us=round(percentile(times, 50), 1),
                   offer_answer_p99_us=round(percentile(times, 99), 1))
    return out


async def _auction_only(lat: Lattice, n: int, max_s: float) -> dict[str, Any]:
    """The auction's own cost at this lattice size: the same items with offers off, so that each is auctioned."""
    auctioneer = await lat.client.auctioneer()
    config = auctioneer.config
    auctioneer.config = dataclasses.replace(config, offer_first=False)
    try:
        since = len(auctioneer.close_times_s)
        samples = await sample(lat.work_once, n, warmup=10, max_s=max_s)
        return {**{f"auction_only_{k}": v for k, v in summary(samples).items()},
                **_auction_stats(lat.client, since + 10)}
    finally:
        auctioneer.config = config


async def run_work(ctx: RunContext) -> None:
    m = ctx.mode
    biggest = max(m.station_counts)
    for count in m.station_counts:
        async with Lattice(ctx, count, tag=f"w{count}") as lat:
            if count == 1:  # the idle station, before any work: agents loaded, first heartbeats written
                await asyncio.sleep(1.0)
                rss = round(lat.children[0].rss_mb(), 1)
                ctx.record("station_idle_rss", {"rss_mb": rss})
                ctx.results["station_idle_rss_mb"] = rss
            n = m.big_lattice_n if count == biggest and count > 10 else m.latency_n
            await lat.work_once()  # the auctioneer and the directory start on first use
            placed_before = _counters(lat.client)
            offers_since = len(getattr(await lat.client.auctioneer(), "offer_times_s", []))
            pids = {"client": os.getpid(), "nats_server": ctx.nats_pid,
                    **{f"station{i}": c.pid for i, c in enumerate(lat.children)}}
            cpu_before = {k: cpu_s(p) for k, p in pids.items() if p}
            samples = await sample(lat.work_once, n, warmup=m.warmup if n == m.latency_n else 10,
                                   max_s=m.latency_max_s)
            stats = {**summary(samples), **_placement_stats(lat.client, placed_before, offers_since)}
            stats["cpu_us_per_item"] = _cpu_per_item(pids, cpu_before, len(samples) + (m.warmup if n == m.latency_n
                                                                                         else 10))
            if hasattr(AuctionConfig, "offer_first"):  # the auction itself, at this size
                try:
                    stats.update(await _auction_only(lat, min(n, 500), m.latency_max_s / 2))
                except Exception as exc:  # a side measurement: recorded, and the scenario goes on
                    log.warning("auction-only pass on %d station(s) failed: %s", count, exc)
                    stats["auction_only_error"] = f"{type(exc).__name__}: {exc}"
            if count == 1:
                stats["station_rss_mb_after"] = round(lat.children[0].rss_mb(), 1)
            ctx.record(f"lattice_work_{count}_stations", stats)
            if count == 3:
                ctx.results.update(lattice_work_p50_us=stats["p50_us"], lattice_work_p99_us=stats["p99_us"])
                stats["timeline_us"] = await trace(lat.work_once, min(m.latency_n, 500))
                invoke = summary(await sample(lat.invoke_once, m.latency_n, warmup=m.warmup, max_s=m.latency_max_s))
                ctx.record("lattice_invoke_3_stations", invoke)
                ctx.results["lattice_invoke_p50_us"] = invoke["p50_us"]
            if count == biggest:
                ctx.results[f"auction_close_p99_us_{count}_stations"] = stats.get("auction_close_p99_us")
    if biggest != 50:
        ctx.skipped["auction_close_p99_us_50_stations"] = f"mode {m.name} runs at most {biggest} stations"


def _cpu_per_item(pids: dict[str, int | None], before: dict[str, float], items: int) -> dict[str, float]:
    """CPU microseconds per work item by process (stations summed): where the time goes when the machine is
    the bottleneck, as it is with 2 cores."""
    used = {k: cpu_s(pids[k] or 0) - v for k, v in before.items()}
    out = {"client": used.pop("client", 0.0), "nats_server": used.pop("nats_server", 0.0),
           "stations": sum(used.values())}
    return {k: round(v / max(items, 1) * 1e6) for k, v in out.items()}


async def run_throughput(ctx: RunContext) -> None:
    m = ctx.mode
    async with Lattice(ctx, 4, tag="tp") as lat:
        await lat.work_once()
        rate = await closed_loop(lat.work_once, m.throughput_n, concurrency=m.concurrency,
                                 max_s=m.throughput_max_s)
    ctx.record("lattice_throughput_4_stations", {"per_s": round(rate, 1), "concurrency": m.concurrency})
    ctx.results["lattice_throughput_per_s"] = round(rate, 1)


async def run_recovery(ctx: RunContext) -> None:
    """Seconds from SIGKILL of the station running a work item to that item running on another station."""
    m = ctx.mode
    trials: list[float] = []
    async with Lattice(ctx, 2, heartbeat_s=RECOVERY_HEARTBEAT_S, tag="rec") as lat:
        policy = WitnessPolicy(pending_grace_s=0.5, unschedulable_base_s=0.2, unschedulable_max_s=1.0)
        async with _controller(ctx, lat.org, policy):
            for trial in range(m.recovery_trials):
                trials.append(await _one_recovery(lat, trial))
    trials.sort()
    median = trials[len(trials) // 2]
    ctx.record("recovery", {"median_s": round(median, 3), "trials_s": [round(t, 3) for t in trials],
                            "heartbeat_s": RECOVERY_HEARTBEAT_S, "witness_interval_s": RECOVERY_WITNESS_INTERVAL_S,
                            "in_heartbeats": round(median / RECOVERY_HEARTBEAT_S, 2)})
    ctx.results.update(recovery_s=round(median, 3), recovery_heartbeat_s=RECOVERY_HEARTBEAT_S)


@contextlib.asynccontextmanager
async def _controller(ctx: RunContext, org: str, policy: WitnessPolicy) -> AsyncIterator[WorkController]:
    # A controller of its own, as `lattice controller run` would be: its own connection, directory and auctioneer.
    async with LatticeClient(NatsSettings(url=ctx.nats_url, name="lattice-bench-controller"), org,
                             create_state=True, policy=policy, auction=AuctionConfig(), source="bench",
                             limits=StateLimits(presence_ttl_s=RECOVERY_HEARTBEAT_S * 3)) as client, \
            WorkController(await client.org_work(), interval_s=RECOVERY_WITNESS_INTERVAL_S) as controller:
        yield controller


async def _one_recovery(lat: Lattice, trial: int) -> float:
    client = lat.client
    record = await client.submit(WorkItemSpec(agent="slow", input=PAYLOAD, max_retries=3))
    victim = await _running_on(client, record.work_id, None, timeout_s=10)
    child = next(c for c in lat.children if c.alive() and c.argv[c.argv.index("--station-id") + 1] == victim)
    child.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await _running_on(client, record.work_id, victim, timeout_s=30)
    elapsed = time.monotonic() - killed
    child.proc.wait()
    await client.cancel_work(record.work_id)
    # A fresh station (new id) replaces the victim, so the next trial again has two to choose from.
    lat.start_station(f"r{trial}")
    await client.wait_for_stations(2, agent="slow", timeout_s=30)
    return elapsed


async def _running_on(client: LatticeClient, work_id: str, not_on: str | None, *, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = await client.get_work(work_id)
        if record is not None and record.phase == WorkPhase.RUNNING and record.station_id not in (None, not_on):
            return record.station_id
        await asyncio.sleep(0.01)
    raise RuntimeError(f"work {work_id} not running{' elsewhere' if not_on else ''} after {timeout_s}s")

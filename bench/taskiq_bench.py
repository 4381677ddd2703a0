"""taskiq with the taskiq-nats broker (core NATS, a queue group) and taskiq-redis results: the same no-op async
task, workers in their own processes (``taskiq worker``), the client waiting with ``wait_result``.

taskiq's Redis result backend is polled: ``wait_result`` checks every ``check_interval`` (0.2 s by default,
which would make every task take ≥ 0.2 s). We poll every 0.5 ms, its best case; the polls cost Redis and client
CPU, which shows in the throughput instead.

This module is both the broker the workers load (``taskiq worker bench.taskiq_bench:broker``) and the scenario.
``BENCH_NATS_URL`` and ``BENCH_REDIS_URL`` tell the broker where the servers are.
"""

from __future__ import annotations

import asyncio
import os
import time

from taskiq_nats import NatsBroker
from taskiq_redis import RedisAsyncResultBackend

from bench.common import PAYLOAD, Child, closed_loop, python, sample, stop_all, summary
from bench.context import RunContext

CHECK_INTERVAL_S = 0.0005

broker = NatsBroker(servers=[os.environ.get("BENCH_NATS_URL", "nats://127.0.0.1:4222")], subject="bench.taskiq",
                    queue="bench").with_result_backend(
    RedisAsyncResultBackend(f"{os.environ.get('BENCH_REDIS_URL', 'redis://127.0.0.1:6379')}/2", result_ex_time=600))


@broker.task(task_name="bench.noop")  # type: ignore[untyped-decorator]  # untyped where taskiq is absent
async def noop(payload: str) -> str:
    return payload


def _workers(ctx: RunContext, redis_url: str, processes: int) -> Child:
    env = {"BENCH_NATS_URL": ctx.nats_url, "BENCH_REDIS_URL": redis_url}
    return Child([python(), "-m", "taskiq", "worker", "bench.taskiq_bench:broker", "--workers", str(processes),
                  "--log-level", "WARNING"], ctx.workdir / f"taskiq-{processes}.log", env)


async def _once() -> None:
    task = await noop.kiq(PAYLOAD)
    result = await task.wait_result(check_interval=CHECK_INTERVAL_S, timeout=30)
    if result.is_err:
        raise RuntimeError(f"taskiq task failed: {result.error}")


async def _wait_ready(worker: Child) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"taskiq worker died:\n{worker.tail()}")
        task = await noop.kiq("ping")
        try:
            await task.wait_result(check_interval=0.01, timeout=1)
            return
        except Exception:
            continue
    raise RuntimeError("taskiq workers did not answer within 60s")


async def run(ctx: RunContext) -> None:
    redis_url = await ctx.redis_url()
    # The broker object was built at import time (the workers need it there): point the client side at this run.
    os.environ.update(BENCH_NATS_URL=ctx.nats_url, BENCH_REDIS_URL=redis_url)
    broker.servers = [ctx.nats_url]
    broker.result_backend = RedisAsyncResultBackend(f"{redis_url}/2", result_ex_time=600)
    await broker.startup()
    m = ctx.mode
    try:
        worker = _workers(ctx, redis_url, 1)
        try:
            await _wait_ready(worker)
            stats = summary(await sample(_once, m.latency_n, warmup=m.warmup, max_s=m.latency_max_s))
            ctx.record("taskiq_1_worker", stats)
            ctx.results["taskiq_p50_us"] = stats["p50_us"]
            ctx.results["taskiq_p99_us"] = stats["p99_us"]
        finally:
            await asyncio.to_thread(stop_all, [worker])
        worker = _workers(ctx, redis_url, 4)
        try:
            await _wait_ready(worker)
            await asyncio.sleep(1.0)  # all four children subscribed, not only the first
            rate = await closed_loop(_once, m.throughput_n, concurrency=m.concurrency, max_s=m.throughput_max_s)
            ctx.record("taskiq_throughput_4_workers", {"per_s": round(rate, 1), "concurrency": m.concurrency,
                                                       "check_interval_s": CHECK_INTERVAL_S})
            ctx.results["taskiq_throughput_per_s"] = round(rate, 1)
        finally:
            await asyncio.to_thread(stop_all, [worker])
    finally:
        await broker.shutdown()

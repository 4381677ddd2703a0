"""Celery with Redis as broker and result backend, the way most users run it: the same no-op task (returns its
100-byte input), workers in their own processes (``--pool solo``: one task at a time, no fork per task), the
client waiting for each result (``AsyncResult.get``, which the Redis backend serves over pub/sub).

This module is both the Celery app (the workers import it: ``celery -A bench.celery_bench worker``) and the
scenario. ``BENCH_REDIS_URL`` tells the app where Redis is.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import Any

from celery import Celery

from bench.common import PAYLOAD, Child, python, sample, stop_all, summary
from bench.context import RunContext

_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
app = Celery("bench", broker=f"{_REDIS}/0", backend=f"{_REDIS}/1")
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False, result_expires=600)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]  # Celery has no type information
def noop(payload: str) -> str:
    return payload


def _workers(ctx: RunContext, url: str, count: int) -> list[Child]:
    env = {"BENCH_REDIS_URL": url}
    return [Child([python(), "-m", "celery", "-A", "bench.celery_bench", "worker", "--pool", "solo", "--loglevel",
                   "warning", "--without-heartbeat", "--without-gossip", "--without-mingle", "-n",
                   f"w{i}@bench"], ctx.workdir / f"celery-w{i}.log", env) for i in range(count)]


def _client(url: str) -> Celery:
    client = Celery("bench-client", broker=f"{url}/0", backend=f"{url}/1")
    client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    return client


def _wait_ready(client: Celery, workers: list[Child]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.send_task("bench.noop", args=["ping"]).get(timeout=2)
            return
        except Exception:
            if not all(w.alive() for w in workers):
                raise RuntimeError(f"celery worker died:\n{workers[0].tail()}") from None
    raise RuntimeError("celery workers did not answer within 60s")


def _windowed(client: Celery, n: int, concurrency: int, max_s: float) -> float:
    """Throughput with at most ``concurrency`` tasks in flight: send, then get the oldest and send one more."""
    window: deque[Any] = deque()
    sent = done = 0
    t0 = time.perf_counter()
    stop = t0 + max_s
    while done < n and time.perf_counter() < stop:
        while len(window) < concurrency and sent < n:
            window.append(client.send_task("bench.noop", args=[PAYLOAD]))
            sent += 1
        window.popleft().get(timeout=30)
        done += 1
    return done / (time.perf_counter() - t0)


async def run(ctx: RunContext) -> None:
    url = await ctx.redis_url()
    m = ctx.mode
    client = _client(url)
    workers = _workers(ctx, url, 1)
    try:
        await asyncio.to_thread(_wait_ready, client, workers)

        async def once() -> None:
            # The client API is synchronous: call it as a user would (the loop has nothing else to do).
            client.send_task("bench.noop", args=[PAYLOAD]).get(timeout=30)

        stats = summary(await sample(once, m.latency_n, warmup=m.warmup, max_s=m.latency_max_s))
        ctx.record("celery_1_worker", stats)
        ctx.results["celery_p50_us"] = stats["p50_us"]
        ctx.results["celery_p99_us"] = stats["p99_us"]
    finally:
        stop_all(workers)
    workers = _workers(ctx, url, 4)
    try:
        await asyncio.to_thread(_wait_ready, client, workers)
        rate = _windowed(client, m.throughput_n, m.concurrency, m.throughput_max_s)
        ctx.record("celery_throughput_4_workers", {"per_s": round(rate, 1), "concurrency": m.concurrency})
        ctx.results["celery_throughput_per_s"] = round(rate, 1)
    finally:
        stop_all(workers)
        client.close()


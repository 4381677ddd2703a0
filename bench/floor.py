"""The floor: raw nats-py request/reply between two processes, the responder echoing the 100-byte payload.

Nothing on top of NATS can be faster than this; every other number is read as a multiple of it. Both sides run
the same event loop as the lattice's client and stations (uvloop); the plain asyncio floor is recorded as well.

    python -m bench.floor URL SUBJECT [--asyncio]     # the responder (a child of the runner)
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import nats
from nats.errors import NoRespondersError

from bench.common import PAYLOAD, Child, python, sample, summary
from bench.context import RunContext


async def serve(url: str, subject: str) -> None:
    nc = await nats.connect(url)

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, cb=echo)
    await nc.flush()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await nc.close()


async def _measure(ctx: RunContext, loop_name: str) -> dict[str, Any]:
    subject = f"bench.floor.{loop_name}"
    argv = [python(), "-m", "bench.floor", ctx.nats_url, subject] + (["--asyncio"] if loop_name == "asyncio" else [])
    child = Child(argv, ctx.workdir / f"floor-{loop_name}.log")
    nc = await nats.connect(ctx.nats_url)
    try:
        payload = PAYLOAD.encode()
        for _ in range(500):  # until the responder has subscribed
            try:
                await nc.request(subject, payload, timeout=1.0)
                break
            except NoRespondersError:
                await asyncio.sleep(0.02)

        async def once() -> None:
            await nc.request(subject, payload, timeout=5.0)

        m = ctx.mode
        return summary(await sample(once, m.latency_n, warmup=m.warmup, max_s=m.latency_max_s))
    finally:
        await nc.close()
        child.stop()


async def run(ctx: RunContext) -> None:
    """Runs under the runner's loop (uvloop); the asyncio variant's responder runs plain asyncio."""
    uv = await _measure(ctx, "uvloop")
    ctx.record("floor", uv)
    ctx.results.update(floor_p50_us=uv["p50_us"], floor_p99_us=uv["p99_us"])
    if ctx.mode.floor_asyncio:
        ctx.record("floor_asyncio_responder", await _measure(ctx, "asyncio"))


def main() -> None:
    url, subject = sys.argv[1], sys.argv[2]
    if "--asyncio" in sys.argv:
        asyncio.run(serve(url, subject))
    else:
        import uvloop

        uvloop.run(serve(url, subject))


if __name__ == "__main__":
    main()

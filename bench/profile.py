"""``python -m bench profile``: pyinstrument over ``n`` async work items, submit -> auction -> run -> result, with
the client and three stations in one process (one event loop), so that one profile shows both sides' CPU.
Writes ``profile.html`` and ``profile.txt`` next to the results; the text tree is what docs/benchmarks.md quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from bench.common import PAYLOAD
from bench.lattice import agent
from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from station_runtime.station.runtime import Station
from station_runtime.station.settings import StationSettings


async def _profile(n: int, out: Path) -> None:
    from pyinstrument import Profiler

    with tempfile.TemporaryDirectory(prefix="lattice-profile-") as tmp:
        async with EmbeddedNats(Path(tmp), sync_always=False) as server, \
                LatticeClient(NatsSettings(url=server.url), "prof", create_state=True) as client:
            await client.put_agent(agent("echo"))
            async with contextlib.AsyncExitStack() as stack:
                for i in range(3):
                    station = Station(StationSettings(org="prof", station_id=f"s{i}",
                                                      nats=NatsSettings(url=server.url)))
                    await station.start()
                    stack.push_async_callback(station.stop, "profile over")
                await client.wait_for_stations(3, agent="echo")

                async def once() -> None:
                    record = await client.submit(WorkItemSpec(agent="echo", input=PAYLOAD), watch=True)
                    await client.wait_work(record.work_id, timeout_s=30)

                for _ in range(50):
                    await once()
                profiler = Profiler(interval=0.0002, async_mode="disabled")
                t0 = time.perf_counter()
                profiler.start()
                for _ in range(n):
                    await once()
                profiler.stop()
                per = (time.perf_counter() - t0) / n * 1e6
    _write(out, profiler.output_html(), profiler.output_text(unicode=True, color=False, show_all=False))
    print(f"{n} items, {per:.0f} us each (client and 3 stations on one loop, profiler on); "
          f"{out / 'profile.html'}")


def _write(out: Path, html: str, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.html").write_text(html)
    (out / "profile.txt").write_text(text)
    print(text)


def main(n: int, out: Path) -> int:
    import uvloop

    uvloop.run(_profile(n, out))
    return 0


if __name__ == "__main__":
    asyncio.run(_profile(500, Path("bench/results")))

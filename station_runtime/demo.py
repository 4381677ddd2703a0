"""``lattice demo``: a whole embedded lattice in one command, torn down at the end."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .api.loader import load_manifests
from .cli import render
from .client import LatticeError
from .contract.messages import InvokeResult
from .examples import DEMO_DIR
from .local.controller import LocalLattice

TEXTS = [
    "the lattice places work by auction and the best bid wins",
    "stations heartbeat so that a dead one leaves the registry by itself",
    "nothing is lost when a station dies because work lives in jetstream",
    "every org is a tenant with its own nats account",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


async def run_demo(console: Console, *, invocations: int = 20, stations: int = 3) -> int:
    started = time.monotonic()
    manifests = load_manifests(DEMO_DIR)
    for station in manifests.stations:
        station.spec.replicas = stations
    with tempfile.TemporaryDirectory(prefix="lattice-demo-") as tmp:
        lattice = LocalLattice(manifests, org="demo", state_dir=Path(tmp), port=-1, heartbeat_s=1.0,
                               on_event=lambda m: console.print(f"[dim]· {m}[/dim]", highlight=False))
        try:
            console.rule("[bold]Station Lattice demo")
            await lattice.start()
            client = lattice.client
            assert client is not None
            agents = [a.name for a in manifests.agents]
            with console.status(f"waiting for {stations} stations to register and load {len(agents)} agents"):
                for agent in agents:
                    await client.wait_for_stations(stations, agent=agent, timeout_s=30)
            records = await client.stations()
            console.print(render.stations_table(records))
            rows: list[tuple[int, str, InvokeResult | str, float]] = []
            gate = asyncio.Semaphore(6)

            async def one(i: int, progress: Progress, task: object) -> None:
                agent = agents[i % len(agents)]
                async with gate:
                    t0 = time.perf_counter()
                    try:
                        result: InvokeResult | str = await client.invoke(TEXTS[i % len(TEXTS)], agent=agent,
                                                                         timeout_s=10, records=records)
                    except LatticeError as exc:
                        result = str(exc)
                    rows.append((i + 1, agent, result, (time.perf_counter() - t0) * 1000))
                    progress.advance(task)  # type: ignore[arg-type]

            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("invoking agents", total=invocations)
                await asyncio.gather(*(one(i, progress, task) for i in range(invocations)))
            rows.sort()
            console.print(render.results_table(rows))
            ok = [r for r in rows if isinstance(r[2], InvokeResult)]
            latencies = [r[3] for r in ok]
            per_station = Counter(r[2].station_id for r in ok if isinstance(r[2], InvokeResult))
            console.print(f"[bold]{len(ok)}/{len(rows)} succeeded[/bold]; spread: "
                          + ", ".join(f"{s}={n}" for s, n in sorted(per_station.items())), highlight=False)
            if latencies:
                console.print(f"latency p50 {statistics.median(latencies):.1f} ms, "
                              f"p99 {percentile(latencies, 0.99):.1f} ms (echo agent sleeps 150 ms)",
                              highlight=False)
            failed = len(rows) - len(ok)
        finally:
            await lattice.stop()
    console.print(f"[bold green]demo finished[/bold green] in {time.monotonic() - started:.1f}s, "
                  "everything stopped.")
    return 0 if failed == 0 else 1

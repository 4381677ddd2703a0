"""``lattice demo``: a whole embedded lattice in one command, torn down at the end."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..api.loader import load_manifests
from ..contract.messages import InvokeResult, WorkPhase
from ..contract.specs import WorkItemSpec
from ..errors import LatticeError
from ..examples import DEMO_DIR
from ..local.controller import LocalLattice
from ..work.policy import WitnessPolicy
from . import render
from .common import console, live_view, run


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    invocations: Annotated[int, typer.Option("--invocations", "-n", min=1, max=10_000)] = 20,
    stations: Annotated[int, typer.Option("--stations", min=1, max=20)] = 3,
) -> None:
    """Run a whole lattice on this machine: embedded NATS, stations, agents, invocations, teardown."""
    raise typer.Exit(run(run_demo(console, invocations=invocations, stations=stations)))

TEXTS = [
    "the lattice places work by auction and the best bid wins",
    "stations heartbeat so that a dead one leaves the registry by itself",
    "nothing is lost when a station dies because work lives in jetstream",
    "every org is a tenant with its own nats account",
]


HEARTBEAT_S = 0.5
WORK_ITEMS = 9


async def async_work_act(console: Console, lattice: LocalLattice, agent: str) -> int:
    """Act two: async work placed by auction with live progress; one station is killed with -9 mid-run and its
    work runs again elsewhere. Returns the number of items that did not succeed."""
    client = lattice.client
    assert client is not None
    heading(console, "Async work: auction, progress, a station killed mid-run")
    spec = WorkItemSpec(agent=agent, input="", max_retries=3)
    ids = [(await client.submit(spec.model_copy(update={"input": TEXTS[i % len(TEXTS)]}))).work_id
           for i in range(WORK_ITEMS)]
    victim: str | None = None
    moved: list[str] = []
    started = time.monotonic()
    with Live(console=console, refresh_per_second=8, transient=False) as live, live_view(console):
        while True:
            records = [r for r in await asyncio.gather(*(client.get_work(i) for i in ids)) if r is not None]
            live.update(render.work_table(records))
            if all(r.phase.terminal for r in records):
                break
            if victim is None and time.monotonic() - started > 0.6:
                running = [r for r in records if r.phase == WorkPhase.RUNNING and r.station_id]
                if running:
                    victim = running[0].station_id
                    assert victim is not None
                    moved = [r.work_id for r in records if r.station_id == victim and not r.phase.terminal]
                    await lattice.kill_station(victim, restart=False)
            if time.monotonic() - started > 25:
                break
            await asyncio.sleep(0.15)
    console.print()
    final = {r.work_id: r for r in await asyncio.gather(*(client.get_work(i) for i in ids)) if r is not None}
    ok = sum(1 for r in final.values() if r.phase == WorkPhase.SUCCEEDED)
    console.print(f"[bold]{ok}/{len(ids)} succeeded[/bold]", highlight=False)
    if victim and moved:
        example = final[moved[0]]
        console.print(f"station [bold]{victim}[/bold] was killed holding {len(moved)} item(s); they ran again on "
                      + ", ".join(sorted({final[m].station_id or "?" for m in moved})) + ". "
                      f"Events of {example.work_id[:12]}…:", highlight=False)
        async for event in client.events(category="work", work_id=example.work_id):
            if event.short_type != "work.progress":
                console.print(render.event_line(event), highlight=False)
    return len(ids) - ok


def heading(console: Console, title: str) -> None:
    """A rule across a terminal; a plain line in a pipe (a rule there would be as wide as the pipe's console)."""
    if console.is_terminal:
        console.rule(Text(title, style="bold"))
    else:
        console.print(Text(f"== {title} ==", style="bold"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(round(q * (len(ordered) - 1)), len(ordered) - 1)]


async def run_demo(console: Console, *, invocations: int = 20, stations: int = 3) -> int:
    started = time.monotonic()
    manifests = load_manifests(DEMO_DIR)
    for station in manifests.stations:
        station.spec.replicas = stations
    with tempfile.TemporaryDirectory(prefix="lattice-demo-") as tmp:
        lattice = LocalLattice(manifests, org="demo", state_dir=Path(tmp), port=-1, heartbeat_s=HEARTBEAT_S,
                               policy=WitnessPolicy(accept_timeout_s=3.0), witness_interval_s=0.25,
                               on_event=lambda m: console.print(Text(f"· {m}", style="dim")))
        try:
            heading(console, "Station Lattice demo")
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
                                                                         timeout_s=10)
                    except LatticeError as exc:
                        result = str(exc)
                    rows.append((i + 1, agent, result, (time.perf_counter() - t0) * 1000))
                    progress.advance(task)  # type: ignore[arg-type]

            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=console) as progress, live_view(console):
                task = progress.add_task("invoking agents", total=invocations)
                await asyncio.gather(*(one(i, progress, task) for i in range(invocations)))
            rows.sort()
            console.print(render.results_table(rows))
            ok = [r for r in rows if isinstance(r[2], InvokeResult)]
            per_station = Counter(r[2].station_id for r in ok if isinstance(r[2], InvokeResult))
            console.print(f"[bold]{len(ok)}/{len(rows)} succeeded[/bold]; spread: "
                          + ", ".join(f"{s}={n}" for s, n in sorted(per_station.items())), highlight=False)
            for agent in agents:
                mine = [r[3] for r in ok if r[1] == agent]
                if mine:
                    console.print(f"{agent}: latency p50 {statistics.median(mine):.1f} ms, "
                                  f"p99 {percentile(mine, 0.99):.1f} ms", highlight=False)
            failed = len(rows) - len(ok)
            failed += await async_work_act(console, lattice, agents[0])
        finally:
            await lattice.stop()
    console.print(f"[bold green]demo finished[/bold green] in {time.monotonic() - started:.1f}s, "
                  "everything stopped.")
    return 0 if failed == 0 else 1

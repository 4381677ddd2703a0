"""``lattice demo``: a whole embedded lattice in one command, torn down at the end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
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
from ..api.models import Agent, ToolServer
from ..contract.messages import InvokeResult, WorkPhase, WorkProgress, WorkRecord
from ..contract.specs import WorkItemSpec
from ..errors import LatticeError
from ..examples import DEMO_DIR
from ..executors.tools.lattice import child_of
from ..local.controller import LocalLattice
from ..modelsim import ModelSim, Script, Step, ToolCallStep
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


PLANNER_ID = "demo-plan"
PLANNER_TEXT = "the witness requeues work whose station died so that nothing is lost in the auction"


def planner_script() -> Script:
    """What the stand-in model does as the planner: look a term up (MCP), count words (a Python tool) and hand
    a summary and a word count to two other agents through the lattice, at once; then await both and report."""
    children = [child_of(PLANNER_ID, 3), child_of(PLANNER_ID, 4)]
    first = Step(tool_calls=(
        ToolCallStep("define", {"term": "witness"}, id="g1"),
        ToolCallStep("count_words", {"text": PLANNER_TEXT}, id="w1"),
        ToolCallStep("lattice_submit", {"agent": "summarizer", "input": PLANNER_TEXT}, id="s1"),
        ToolCallStep("lattice_submit", {"agent": "wordcount", "input": PLANNER_TEXT}, id="s2")))
    return Script("demo-planner", (first, Step(tool_calls=(ToolCallStep("lattice_await", {"work_ids": children},
                                                                        id="a1"),)),
                                   Step(text="Report. The children answered: {tool_results}")))


def planner_agent(base_url: str | None) -> Agent:
    """The planner: modelsim's script at ``base_url``, or (``None``) gpt-4o-mini with the user's OPENAI_API_KEY."""
    model: dict[str, object] = {"provider": "openai", "name": "demo-planner", "baseUrl": base_url,
                                "apiKeyEnv": "LATTICE_DEMO_NO_KEY"}
    if base_url is None:
        model = {"provider": "openai", "name": "gpt-4o-mini", "apiKeyEnv": "OPENAI_API_KEY"}
    model["price"] = {"inputPerMillionUsd": 0.15, "outputPerMillionUsd": 0.60}  # gpt-4o-mini's list price
    return Agent.model_validate({"metadata": {"name": "planner"}, "spec": {
        "description": "Plans: looks terms up, counts words, delegates a summary and a count, reports.",
        "systemPrompt": "You plan. Define the key term with define, count the words with count_words, hand the "
                        "text to the agents summarizer and wordcount with lattice_submit, await both with "
                        "lattice_await, then report what they said.",
        "model": model, "maxTurns": 6, "budget": {"maxTokens": 50_000},
        "tools": [{"server": "glossary", "allow": ["define"]},
                  {"function": "station_runtime.examples.agents:count_words"},
                  {"lattice": ["submit", "await"], "delegateTo": ["summarizer", "wordcount"]}]}})


async def agent_act(console: Console, lattice: LocalLattice) -> int:
    """Act three: a tool-using agent (an MCP server's tool, a Python tool) that delegates two pieces of its work
    to agents on other stations and reports; its record shows parent, children and usage. Returns failures."""
    client = lattice.client
    assert client is not None
    heading(console, "An agent with tools that delegates through the lattice")
    real = bool(os.environ.get("OPENAI_API_KEY")) and os.environ.get("LATTICE_DEMO_MODEL") == "openai"
    async with contextlib.AsyncExitStack() as stack:
        if real:
            console.print("model: gpt-4o-mini (OPENAI_API_KEY, LATTICE_DEMO_MODEL=openai)", highlight=False)
            base_url = None
        else:
            sim = await stack.enter_async_context(ModelSim([planner_script()], record=False))
            console.print(Text.assemble(("model: modelsim", "bold yellow"), f", a local stand-in at "
                                        f"{sim.openai_base_url}, not a real LLM: it plays a script. With a key, "
                                        "OPENAI_API_KEY=... LATTICE_DEMO_MODEL=openai make demo."))
            base_url = sim.openai_base_url
        glossary = ToolServer.model_validate({"metadata": {"name": "glossary"}, "spec": {
            "command": sys.executable, "args": ["-m", "station_runtime.examples.mcp_glossary"]}})
        await client.put_tool_server(glossary)
        await client.put_agent(planner_agent(base_url))
        with console.status("stations load the planner and start its MCP server"):
            await client.wait_for_stations(1, agent="planner", timeout_s=30)
        await client.submit(WorkItemSpec(agent="planner", input=PLANNER_TEXT, max_retries=1), work_id=PLANNER_ID,
                            watch=True)
        said: set[str] = set()

        async def on_progress(update: WorkProgress | WorkRecord) -> None:
            line = render.progress_line(update) if isinstance(update, WorkProgress) else update.phase.value
            if line and line not in said:  # each step once (a record update repeats its phase)
                said.add(line)
                console.print(Text(f"  {line}", style="dim"))

        final = await client.wait_work(PLANNER_ID, timeout_s=90, on_progress=on_progress)
    console.print(render.work_detail(final, render.preview(await client.result(final), 200)))
    for child_id_ in final.children:
        child = await client.get_work(child_id_)
        if child is not None:
            console.print(f"  child {child.work_id}: {child.spec.agent} on {child.station_id}, {child.phase.value}: "
                          f"{render.preview(await client.result(child))}", highlight=False, markup=False)
    return 0 if final.phase == WorkPhase.SUCCEEDED else 1


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
            failed += await agent_act(console, lattice)
        finally:
            await lattice.stop()
    console.print(f"[bold green]demo finished[/bold green] in {time.monotonic() - started:.1f}s, "
                  "everything stopped.")
    return 0 if failed == 0 else 1

"""``lattice get stations|agents`` and ``lattice status``: what the registry and the agents bucket say."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from ..client import LatticeClient
from ..contract.selectors import parse_selector
from ..routing import is_live
from . import render
from .common import USAGE, Globals, Output, OutputOpt, console, fail, print_items, run


def register(app: typer.Typer) -> None:
    get_app = typer.Typer(help="List stations or agents.", no_args_is_help=True)
    get_app.command("stations")(get_stations)
    get_app.command("agents")(get_agents)
    app.add_typer(get_app, name="get")
    app.command()(status)


def get_stations(
    ctx: typer.Context,
    output: OutputOpt = Output.TABLE,
    selector: Annotated[str, typer.Option("--selector", "-l", help="Label selector.")] = "",
) -> None:
    """List the stations of the org (from the registry)."""
    g: Globals = ctx.obj
    try:
        sel = parse_selector(selector)
    except ValueError as exc:
        fail(str(exc), code=USAGE)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            records = [r for r in await client.stations() if sel is None or sel.matches(r.labels)]
        print_items(records, output, lambda wide: render.stations_table(records, wide=wide),
                    f"No stations in org {g.org}.")

    run(main())


def get_agents(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """List the agents of the org, how many live stations host each, and why a station could not load one."""
    g: Globals = ctx.obj

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            agents, stations = await client.agents(), await client.stations()
        print_items(agents, output, lambda wide: render.agents_table(agents, stations, wide=wide),
                    f"No agents in org {g.org}.")

    run(main())


def status(ctx: typer.Context) -> None:
    """One-screen summary: NATS, stations, agents."""
    g: Globals = ctx.obj

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            stations, agents = await client.stations(), await client.agents()
        live = [s for s in stations if is_live(s)]
        load = sum(s.load for s in live)
        capacity = sum(s.capacity for s in live)
        console.print(Text.assemble(("NATS", "bold"), f"     {g.nats.url}\n", ("Org", "bold"), f"      {g.org}\n",
                                    ("Stations", "bold"), f" {len(live)} live / {len(stations)} registered, load "
                                    f"{load}/{capacity}\n", ("Agents", "bold"), f"   {len(agents)}"))
        if stations:
            console.print(render.stations_table(stations))
        if agents:
            console.print(render.agents_table(agents, stations))

    run(main())

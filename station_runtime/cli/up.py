"""``lattice up`` (an embedded lattice from manifests), ``lattice apply`` (manifests into a running one) and
``lattice delete agent|toolserver``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ..api.loader import ManifestError, ManifestSet, load_manifests
from ..client import LatticeClient
from ..contract.errors import InvalidIdError
from ..contract.ids import validate_id
from .common import USAGE, Globals, MetricsPort, console, fail, metrics_endpoint, run, stop_on_signals

#: The port `lattice up` listens on unless told otherwise (the NATS default, so that other tools find it).
DEFAULT_PORT = 4222


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(apply)
    delete_app = typer.Typer(help="Remove an agent or a ToolServer from a running lattice.", no_args_is_help=True)
    delete_app.command("agent")(delete_agent)
    delete_app.command("toolserver")(delete_toolserver)
    app.add_typer(delete_app, name="delete")


def delete_agent(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The agent.")]) -> None:
    """Remove an agent: its stations drop it live (work for it then finds no station)."""
    async def remove(client: LatticeClient) -> str:
        if name not in {a.name for a in await client.agents()}:
            fail(f"no agent {name!r} in org {client.org}")
        await client.delete_agent(name)
        return f"agent/{name} deleted"

    _delete(ctx, name, "agent name", remove)


def delete_toolserver(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The ToolServer.")]) -> None:
    """Remove a ToolServer: the agents that name it are published without it, and their stations say so."""
    async def remove(client: LatticeClient) -> str:
        if name not in {s.name for s in await client.tool_servers()}:
            fail(f"no ToolServer {name!r} in org {client.org}")
        users = await client.delete_tool_server(name)
        return f"toolserver/{name} deleted" + (f" (agents republished without it: {', '.join(users)})"
                                               if users else "")

    _delete(ctx, name, "ToolServer name", remove)


def _delete(ctx: typer.Context, name: str, what: str,
            remove: Callable[[LatticeClient], Awaitable[str]]) -> None:
    """Check the name (exit 2 if it cannot be one), then remove it on the org's lattice and say so."""
    g: Globals = ctx.obj
    try:
        validate_id(name, what)
    except InvalidIdError as exc:
        fail(str(exc), code=USAGE)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            said = await remove(client)
        console.print(said, markup=False)

    run(main())


def load(paths: list[Path]) -> ManifestSet:
    """The manifests under ``paths``, or exit 2 saying what is wrong with which file (or that there are none)."""
    try:
        manifests = load_manifests(*paths)
    except ManifestError as exc:
        fail(str(exc), code=USAGE)
    except (FileNotFoundError, OSError) as exc:
        fail(str(exc), code=USAGE)
    if not len(manifests):
        fail(f"no manifests in {', '.join(map(str, paths))}: expected YAML documents (or .prompt files) of kind "
             "Station, Agent or WorkItem", code=USAGE)
    return manifests


def up(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Option("--filename", "-f", help="Manifest file or directory.")],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="JetStream data and logs.")] = Path(".lattice"),
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535, show_default=False,
                                             help=f"NATS port. Given: kept, or `lattice up` fails; 0: any free "
                                                  f"port. Default {DEFAULT_PORT}, or a free one (said so) if "
                                                  "that is taken.")] = None,
    no_sync: Annotated[bool, typer.Option("--no-sync", help="Let NATS fsync lazily: faster, but an OS "
                                                            "crash can lose acknowledged writes.")] = False,
    heartbeat_interval: Annotated[float, typer.Option("--heartbeat-interval", min=0.05, max=3600)] = 2.0,
    use_nats: Annotated[bool, typer.Option("--use-nats/--embedded", help="Use the --nats URL instead of "
                                           "starting an embedded server.")] = False,
    metrics_port: MetricsPort = None,
) -> None:
    """Start a lattice from manifests: embedded NATS, the agents, and the stations. Ctrl-C stops it."""
    from ..local.controller import LocalLattice
    from ..local.discovery import clear_current, write_current

    g: Globals = ctx.obj
    manifests = load(files)
    if not manifests.stations:
        fail("no Station manifest found: a lattice needs at least one station", code=USAGE)

    def say(message: str) -> None:
        console.print(Text.assemble((time.strftime("%H:%M:%S"), "dim"), " ", message), soft_wrap=True)

    async def main() -> int:
        lattice = LocalLattice(manifests, org=g.org, state_dir=state_dir, nats_url=g.nats.url if use_nats else None,
                               nats=g.nats, port=DEFAULT_PORT if port is None else port or -1,
                               port_required=bool(port), sync_always=not no_sync,
                               heartbeat_s=heartbeat_interval, on_event=say)
        stop = stop_on_signals()
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(metrics_endpoint(metrics_port))
            await lattice.start()
            write_current(lattice.url, g.org, lattice.nats_settings.creds_file if lattice.nats_settings else None)
            console.print(Text.assemble(("lattice up", "bold green"), f": org {g.org}, NATS {lattice.url}. In another "
                                        "terminal: ", ("lattice get stations", "bold"), ". Ctrl-C to stop."),
                          soft_wrap=True)
            return await lattice.run_until(stop)
        finally:
            clear_current()
            await lattice.stop()
            await stack.aclose()

    raise typer.Exit(run(main(), service="lattice-up", serve_metrics=True, attributes={"lattice.org": g.org}))


def apply(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Option("--filename", "-f", help="Manifest file or directory.")],
) -> None:
    """Publish ToolServer and Agent manifests to a running lattice (stations load them live) and submit WorkItem
    manifests."""
    g: Globals = ctx.obj
    manifests = load(files)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            for server in manifests.tool_servers:
                users = await client.put_tool_server(server)
                console.print(f"toolserver/{server.name} configured"
                              + (f" (agents republished: {', '.join(users)})" if users else ""), markup=False)
            for agent in manifests.agents:
                rev = await client.put_agent(agent)
                console.print(f"agent/{agent.name} configured (revision {rev})", markup=False)
            for item in manifests.work_items:
                record = await client.submit(item.spec, work_id=item.metadata.uid or item.name)
                console.print(f"workitem/{item.name} submitted as {record.work_id}: {record.phase.value}",
                              markup=False)
            for station in manifests.stations:
                console.print(Text.assemble((f"station/{station.name} skipped", "yellow"), ": stations are started "
                                            "by `lattice up` or the Kubernetes operator"))

    run(main())

"""``lattice``: run a lattice (``up``, ``station run``, ``demo``) and talk to a running one (``status``, ``get``,
``invoke``, ``apply``). Commands parse and validate their arguments, then call library code."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from .. import __version__
from ..api.loader import ManifestError, load_manifests
from ..api.selectors import LabelSelector, parse_labels, parse_selector
from ..client import InvokeFailed, LatticeClient, LatticeError
from ..contract.errors import InvalidIdError
from ..contract.ids import validate_id
from ..natsio.connect import DEFAULT_URL, NatsSettings
from . import render

app = typer.Typer(name="lattice", help="Station Lattice: LLM-agent work across a lattice of stations over NATS.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
station_app = typer.Typer(help="Run a station runtime.", no_args_is_help=True)
get_app = typer.Typer(help="List stations or agents.", no_args_is_help=True)
work_app = typer.Typer(help="Inspect and cancel async work.", no_args_is_help=True)
controller_app = typer.Typer(help="Run the work controller (auctioneer + witness).", no_args_is_help=True)
app.add_typer(station_app, name="station")
app.add_typer(get_app, name="get")
app.add_typer(work_app, name="work")
app.add_typer(controller_app, name="controller")

console = Console()
err_console = Console(stderr=True)

OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table, wide, json or yaml.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@dataclass
class Globals:
    nats: NatsSettings
    org: str


def _resolve_url(url: str | None) -> tuple[str, str | None]:
    """--nats/LATTICE_NATS_URL, else the lattice that `lattice up` started here, else the default port."""
    if url:
        return url, None
    from ..local.discovery import read_current

    current = read_current()
    if current:
        return current["url"], current.get("org")
    return DEFAULT_URL, None


@app.callback()
def _globals(
    ctx: typer.Context,
    nats_url: Annotated[str | None, typer.Option("--nats", envvar="LATTICE_NATS_URL",
                                                 help="NATS URL of the lattice.")] = None,
    org: Annotated[str | None, typer.Option("--org", envvar="LATTICE_ORG", help="Org (tenant).")] = None,
    creds: Annotated[Path | None, typer.Option("--creds", envvar="LATTICE_NATS_CREDS",
                                               help="NATS creds file.")] = None,
    nkey_seed_file: Annotated[Path | None, typer.Option("--nkey-seed-file", envvar="LATTICE_NATS_NKEY_SEED_FILE",
                                                        help="NATS nkey seed file.")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="LATTICE_NATS_TOKEN", help="NATS token.",
                                              show_default=False)] = None,
    inbox_prefix: Annotated[str | None, typer.Option("--inbox-prefix", envvar="LATTICE_NATS_INBOX_PREFIX",
                                                     help="Reply inbox prefix (JWT mode).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", envvar="LATTICE_LOG_LEVEL")] = "WARNING",
) -> None:
    _setup_logging(log_level)
    url, discovered_org = _resolve_url(nats_url)
    org = org or discovered_org or "default"
    try:
        validate_id(org, "org id")
    except InvalidIdError as exc:
        fail(str(exc))
    for path, what in ((creds, "creds file"), (nkey_seed_file, "nkey seed file")):
        if path is not None and not path.is_file():
            fail(f"{what} {path} does not exist")
    # A CLI command fails fast when NATS is away; long-running commands (station, controller, up) never give up.
    attempts = -1 if ctx.invoked_subcommand in ("station", "controller", "up", "operator") else 3
    ctx.obj = Globals(NatsSettings(url=url, token=token, creds_file=creds, nkey_seed_file=nkey_seed_file,
                                   inbox_prefix=inbox_prefix, name="lattice-cli", max_reconnect_attempts=attempts),
                      org)


def _setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except LatticeError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _check_output(output: str) -> str:
    if output not in ("table", "wide", "json", "yaml"):
        fail(f"unknown output format {output!r}: use table, wide, json or yaml")
    return output


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"station-lattice {__version__}")


# --- station -----------------------------------------------------------------------------------------------


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@station_app.command("run")
def station_run(
    ctx: typer.Context,
    station_id: Annotated[str, typer.Option("--station-id", envvar="LATTICE_STATION_ID", help="Stable id.")],
    capability: Annotated[list[str] | None, typer.Option("--capability", envvar="LATTICE_CAPABILITIES",
                                                         help="Capability (repeat, or comma-separated).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", envvar="LATTICE_LABELS",
                                                    help="key=value (repeat, or comma-separated).")] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", envvar="LATTICE_MAX_CONCURRENCY",
                                                 min=1)] = 4,
    max_queue: Annotated[int | None, typer.Option("--max-queue", envvar="LATTICE_MAX_QUEUE", min=0)] = None,
    agent_selector: Annotated[str, typer.Option("--agent-selector", envvar="LATTICE_AGENT_SELECTOR",
                                                help="Label selector for agents, e.g. 'team=a,tier in (x,y)'.")] = "",
    agent_selector_json: Annotated[str, typer.Option("--agent-selector-json", envvar="LATTICE_AGENT_SELECTOR_JSON",
                                                     help="Agent selector as JSON (matchLabels/matchExpressions).",
                                                     hidden=True)] = "",
    heartbeat_interval: Annotated[float, typer.Option("--heartbeat-interval", envvar="LATTICE_HEARTBEAT_INTERVAL",
                                                      min=0.05, help="Seconds.")] = 2.0,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", envvar="LATTICE_DRAIN_TIMEOUT", min=0,
                                                 help="Seconds to finish in-flight work on SIGTERM.")] = 30.0,
    health_port: Annotated[int | None, typer.Option("--health-port", envvar="LATTICE_HEALTH_PORT",
                                                    help="Serve /healthz and /readyz on this port.")] = None,
) -> None:
    """Run one station until SIGTERM (then drain). The entry point of station pods and of `lattice up`."""
    from ..station.runtime import run_station
    from ..station.settings import StationSettings

    g: Globals = ctx.obj
    try:
        selector: LabelSelector | None = (LabelSelector.model_validate_json(agent_selector_json)
                                          if agent_selector_json else parse_selector(agent_selector))
        settings = StationSettings(
            org=g.org, station_id=station_id, nats=g.nats, capabilities=tuple(_split(capability or [])),
            labels=parse_labels(label or []), max_concurrency=max_concurrency, max_queue=max_queue,
            agent_selector=selector, heartbeat_interval_s=heartbeat_interval, drain_timeout_s=drain_timeout,
            health_port=health_port)
    except (ValueError, ValidationError) as exc:
        fail(str(exc))
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    raise typer.Exit(runner(run_station(settings)))


# --- up / apply ---------------------------------------------------------------------------------------------


def _load(paths: list[Path]) -> Any:
    try:
        return load_manifests(*paths)
    except (ManifestError, FileNotFoundError) as exc:
        fail(str(exc))


@app.command()
def up(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Option("--filename", "-f", help="Manifest file or directory.")],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="JetStream data and logs.")] = Path(".lattice"),
    port: Annotated[int, typer.Option("--port", help="NATS port (a free one if taken).")] = 4222,
    no_sync: Annotated[bool, typer.Option("--no-sync", help="Let NATS fsync lazily: faster, but an OS "
                                                            "crash can lose acknowledged writes.")] = False,
    heartbeat_interval: Annotated[float, typer.Option("--heartbeat-interval", min=0.05)] = 2.0,
    use_nats: Annotated[bool, typer.Option("--use-nats/--embedded", help="Use the --nats URL instead of "
                                           "starting an embedded server.")] = False,
) -> None:
    """Start a lattice from manifests: embedded NATS, the agents, and the stations. Ctrl-C stops it."""
    from ..local.controller import LocalLattice
    from ..local.discovery import clear_current, write_current

    g: Globals = ctx.obj
    manifests = _load(files)
    if not manifests.stations:
        fail("no Station manifest found: a lattice needs at least one station")

    async def main() -> int:
        import signal

        lattice = LocalLattice(manifests, org=g.org, state_dir=state_dir, nats_url=g.nats.url if use_nats else None,
                               nats=g.nats, port=port, sync_always=not no_sync, heartbeat_s=heartbeat_interval,
                               on_event=lambda m: console.print(f"[dim]{_now()}[/dim] {m}", highlight=False))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await lattice.start()
            write_current(lattice.url, g.org)
            console.print(f"[bold green]lattice up[/bold green]: org {g.org}, NATS {lattice.url}. "
                          f"In another terminal: [bold]lattice get stations[/bold]. Ctrl-C to stop.")
            return await lattice.run_until(stop)
        finally:
            clear_current()
            await lattice.stop()

    raise typer.Exit(_run(main()))


def _now() -> str:
    import time

    return time.strftime("%H:%M:%S")


@app.command()
def apply(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Option("--filename", "-f", help="Manifest file or directory.")],
) -> None:
    """Publish Agent manifests to a running lattice (stations load them live)."""
    g: Globals = ctx.obj
    manifests = _load(files)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            for agent in manifests.agents:
                rev = await client.put_agent(agent)
                console.print(f"agent/{agent.name} configured (revision {rev})")
            for station in manifests.stations:
                console.print(f"[yellow]station/{station.name} skipped[/yellow]: stations are started by "
                              "`lattice up` or the Kubernetes operator")

    _run(main())


# --- read -------------------------------------------------------------------------------------------------


@get_app.command("stations")
def get_stations(
    ctx: typer.Context,
    output: OutputOpt = "table",
    selector: Annotated[str, typer.Option("--selector", "-l", help="Label selector.")] = "",
) -> None:
    """List the stations of the org (from the registry)."""
    g: Globals = ctx.obj
    output = _check_output(output)
    try:
        sel = parse_selector(selector)
    except ValueError as exc:
        fail(str(exc))

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            records = [r for r in await client.stations() if sel is None or sel.matches(r.labels)]
        _print_list(records, output, lambda: render.stations_table(records, wide=output == "wide"),
                    f"No stations in org {g.org}.")

    _run(main())


@get_app.command("agents")
def get_agents(ctx: typer.Context, output: OutputOpt = "table") -> None:
    """List the agents of the org and how many live stations host each."""
    g: Globals = ctx.obj
    output = _check_output(output)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            agents, stations = await client.agents(), await client.stations()
        _print_list(agents, output, lambda: render.agents_table(agents, stations), f"No agents in org {g.org}.")

    _run(main())


def _print_list(items: Any, output: str, table: Any, empty: str) -> None:
    if output == "json":
        print(render.to_json(items))
    elif output == "yaml":
        print(render.to_yaml(items), end="")
    elif not items:
        console.print(empty)
    else:
        console.print(table())


@app.command()
def status(ctx: typer.Context) -> None:
    """One-screen summary: NATS, stations, agents."""
    g: Globals = ctx.obj

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            stations, agents = await client.stations(), await client.agents()
        from ..routing import is_live

        live = [s for s in stations if is_live(s)]
        load = sum(s.load for s in live)
        capacity = sum(s.capacity for s in live)
        console.print(f"[bold]NATS[/bold]     {g.nats.url}\n[bold]Org[/bold]      {g.org}\n"
                      f"[bold]Stations[/bold] {len(live)} live / {len(stations)} registered, "
                      f"load {load}/{capacity}\n[bold]Agents[/bold]   {len(agents)}", highlight=False)
        if stations:
            console.print(render.stations_table(stations))
        if agents:
            console.print(render.agents_table(agents, stations))

    _run(main())


@app.command()
def invoke(
    ctx: typer.Context,
    args: Annotated[list[str], typer.Argument(help="AGENT INPUT, or INPUT with --capability. '-' reads stdin.")],
    capability: Annotated[str | None, typer.Option("--capability", "-c")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds.")] = 120.0,
    station: Annotated[str | None, typer.Option("--station", help="Run on this station only.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Parse INPUT as JSON.")] = False,
    output: OutputOpt = "table",
) -> None:
    """Run an agent synchronously on the least loaded station that hosts it and print the result."""
    g: Globals = ctx.obj
    output = _check_output(output)
    expected = 1 if capability else 2
    if len(args) != expected:
        fail("usage: lattice invoke AGENT INPUT  |  lattice invoke --capability CAP INPUT")
    agent = None if capability else args[0]
    raw = sys.stdin.read() if args[-1] == "-" else args[-1]
    payload: Any = raw
    if as_json:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            fail(f"--json given but INPUT is not JSON: {exc}")
    try:
        for value, kind in ((agent, "agent name"), (capability, "capability"), (station, "station id")):
            if value is not None:
                validate_id(value, kind)
    except InvalidIdError as exc:
        fail(str(exc))

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            try:
                result = await client.invoke(payload, agent=agent, capability=capability, timeout_s=timeout,
                                             station=station)
            except InvokeFailed as exc:
                fail(str(exc), code=2)
        if output in ("json", "yaml"):
            print(render.to_json(result) if output == "json" else render.to_yaml(result), end="")
        else:
            out = result.output if isinstance(result.output, str) else json.dumps(result.output, indent=2)
            print(out)
            err_console.print(f"[dim]{result.agent} on {result.station_id} in {result.duration_ms:.1f} ms[/dim]",
                              highlight=False)

    _run(main())


# --- async work -------------------------------------------------------------------------------------------


@app.command()
def submit(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(help="AGENT INPUT, or INPUT with --capability.")] = None,
    capability: Annotated[list[str] | None, typer.Option("--capability", "-c", help="Required (repeat).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="Required station label k=v.")] = None,
    prefer: Annotated[list[str] | None, typer.Option("--prefer", help="Preferred station label k=v.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="startToClose, seconds.")] = 600.0,
    schedule_timeout: Annotated[float | None, typer.Option("--schedule-timeout", min=0.001,
                                                           help="scheduleToStart, seconds.")] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, max=50)] = 2,
    work_id: Annotated[str | None, typer.Option("--id", help="Work id (idempotent resubmission).")] = None,
    filename: Annotated[Path | None, typer.Option("--filename", "-f", help="WorkItem manifest(s) instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Parse INPUT as JSON.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Show live progress until the result.")] = False,
    output: OutputOpt = "table",
) -> None:
    """Submit async work: stored in KV, placed by auction, retried by the witness; prints its id."""
    from ..api.models import WorkConstraints, WorkItemSpec, WorkTimeouts

    g: Globals = ctx.obj
    output = _check_output(output)
    specs: list[tuple[str | None, WorkItemSpec]] = []
    if filename is not None:
        manifests = _load([filename])
        if not manifests.work_items:
            fail(f"no WorkItem manifest in {filename}")
        specs = [(w.metadata.uid or w.name, w.spec) for w in manifests.work_items]
    else:
        args = args or []
        if len(args) != (1 if capability else 2):
            fail("usage: lattice submit AGENT INPUT  |  lattice submit --capability CAP INPUT  |  "
                 "lattice submit -f FILE")
        raw: Any = args[-1]
        if as_json:
            try:
                raw = json.loads(raw)
            except ValueError as exc:
                fail(f"--json given but INPUT is not JSON: {exc}")
        try:
            spec = WorkItemSpec(
                agent=None if capability else args[0], required_capabilities=_split(capability or []), input=raw,
                constraints=WorkConstraints(labels=parse_labels(label or []), prefer_labels=parse_labels(prefer or [])),
                timeouts=WorkTimeouts(start_to_close_seconds=timeout, schedule_to_start_seconds=schedule_timeout),
                max_retries=retries)
            if work_id is not None:
                validate_id(work_id, "work id")
        except (ValueError, ValidationError) as exc:
            fail(str(exc))
        specs = [(work_id, spec)]

    async def main() -> int:
        async with LatticeClient(g.nats, g.org) as client:
            records = [await client.submit(spec, work_id=wid, watch=wait or follow) for wid, spec in specs]
            if not (wait or follow):
                for record in records:
                    if output in ("json", "yaml"):
                        print(render.to_json(record) if output == "json" else render.to_yaml(record), end="")
                    else:
                        console.print(f"work/{record.work_id} submitted: {record.phase.value}"
                                      f"{f' on {record.station_id}' if record.station_id else ''}"
                                      f"{f' ({record.reason})' if record.reason else ''}", highlight=False)
                return 0
            code = 0
            for record in records:
                final = await _follow(client, record.work_id, live=follow)
                result = await client.result(final)
                if output in ("json", "yaml"):
                    print(render.to_json(final) if output == "json" else render.to_yaml(final), end="")
                elif final.phase.value == "Succeeded":
                    print(result if isinstance(result, str) else json.dumps(result, indent=2))
                else:
                    err_console.print(render.work_detail(final, result))
                code = code or (0 if final.phase.value == "Succeeded" else 2)
            return code

    raise typer.Exit(_run(main()))


async def _follow(client: LatticeClient, work_id: str, *, live: bool) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..contract.messages import WorkProgress, WorkRecord

    if not live:
        return await client.wait_work(work_id)
    tokens: list[str] = []
    columns = (TextColumn("[bold]{task.fields[phase]:<12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[station]} {task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task("", total=100, phase="Pending", station="")

        async def on_progress(update: WorkProgress | WorkRecord) -> None:
            if isinstance(update, WorkRecord):
                bar.update(task, phase=update.phase.value, station=update.station_id or "",
                           description=update.reason[:60])
                if update.phase.value == "Succeeded":
                    bar.update(task, completed=100)
            else:
                if update.tokens:
                    tokens.append(update.tokens)
                bar.update(task, completed=update.percent or 0, description=update.message[:60])

        final = await client.wait_work(work_id, on_progress=on_progress)
    return final


@work_app.command("get")
def work_get(ctx: typer.Context, work_id: str, output: OutputOpt = "table") -> None:
    """Show one work item: phase, station, attempts, timings, result or error."""
    g: Globals = ctx.obj
    output = _check_output(output)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            record = await client.get_work(work_id)
            if record is None:
                fail(f"no work {work_id!r} in org {g.org!r}")
            result = await client.result(record)
        if output in ("json", "yaml"):
            print(render.to_json(record) if output == "json" else render.to_yaml(record), end="")
        else:
            console.print(render.work_detail(record, result))

    _run(main())


@work_app.command("list")
def work_list(
    ctx: typer.Context,
    phase: Annotated[str | None, typer.Option("--phase", help="Only work in this phase.")] = None,
    output: OutputOpt = "table",
) -> None:
    """List the org's work, oldest first."""
    g: Globals = ctx.obj
    output = _check_output(output)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            records = [r for r in await client.list_work() if phase is None or r.phase.value.lower() == phase.lower()]
        _print_list(records, output, lambda: render.work_table(records, wide=output == "wide"),
                    f"No work in org {g.org}.")

    _run(main())


@work_app.command("watch")
def work_watch(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.1)] = 0.5,
    until_done: Annotated[bool, typer.Option("--until-done", help="Exit when no work is unfinished.")] = False,
) -> None:
    """A live table of the org's work (Ctrl-C to stop)."""
    from rich.live import Live

    g: Globals = ctx.obj

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    records = await client.list_work()
                    live.update(render.work_table(records[-40:]))
                    if until_done and all(r.phase.terminal for r in records):
                        return
                    await asyncio.sleep(interval)

    _run(main())


@work_app.command("cancel")
def work_cancel(ctx: typer.Context, work_id: str) -> None:
    """Cancel work: at once if queued; running work is stopped on its station."""
    g: Globals = ctx.obj

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            record = await client.cancel_work(work_id)
            if record.phase.value == "Cancelled":
                console.print(f"work/{work_id} cancelled")
            elif record.phase.terminal:
                console.print(f"work/{work_id} already finished: {record.phase.value}")
            else:
                final = await client.wait_work(work_id, timeout_s=30)
                console.print(f"work/{work_id} {final.phase.value.lower()}")

    _run(main())


@app.command()
def events(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    type_: Annotated[list[str] | None, typer.Option("--type", "-t", help="e.g. work.requeued, or work.")] = None,
    work_id: Annotated[str | None, typer.Option("--work", help="Only events of this work item.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
) -> None:
    """Replay the org's CloudEvents (the audit log), and follow new ones with --follow."""
    g: Globals = ctx.obj
    types = _split(type_ or [])
    category = types[0].split(".")[0] if types and all(t.split(".")[0] == types[0].split(".")[0]
                                                      for t in types) else None
    if category not in (None, "station", "agent", "work"):
        fail(f"unknown event category {category!r}: use station, agent or work")

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            async for event in client.events(follow=follow, category=category, work_id=work_id):
                if types and not any(event.short_type == t or event.short_type.startswith(t.rstrip(".") + ".")
                                     for t in types):
                    continue
                if output == "json":
                    print(event.model_dump_json(exclude_none=True), flush=True)
                else:
                    console.print(render.event_line(event), highlight=False)

    _run(main())


@controller_app.command("run")
def controller_run(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Witness sweep, seconds.")] = 1.0,
    stuck_threshold: Annotated[float, typer.Option("--stuck-threshold", min=0.1,
                                                   help="Seconds without progress before requeue.")] = 600.0,
    accept_timeout: Annotated[float, typer.Option("--accept-timeout", min=0.1)] = 5.0,
) -> None:
    """Run the work controller until SIGTERM: it schedules what nobody scheduled and witnesses stuck work.
    Several may run at once."""
    from ..work.controller import WorkController
    from ..work.policy import WitnessPolicy

    g: Globals = ctx.obj
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)

    async def main() -> int:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        policy = WitnessPolicy(accept_timeout_s=accept_timeout, stuck_threshold_s=stuck_threshold)
        controller = WorkController(g.nats, g.org, policy=policy, interval_s=interval)
        await controller.start()
        try:
            await stop.wait()
        finally:
            await controller.stop()
        return 0

    raise typer.Exit(_run(main()))


@app.command("operator")
def operator_run(
    ctx: typer.Context,
    namespace: Annotated[list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeat); "
                                                        "default: all namespaces.")] = None,
    liveness_port: Annotated[int, typer.Option("--liveness-port", help="Serve /healthz on this port; 0: off.")] = 8081,
    station_nats_url: Annotated[str | None, typer.Option("--station-nats-url", envvar="LATTICE_STATION_NATS_URL",
                                                         help="NATS URL as station pods see it.")] = None,
    station_image: Annotated[str | None, typer.Option("--station-image", envvar="LATTICE_STATION_IMAGE")] = None,
    auth: Annotated[str, typer.Option("--auth", envvar="LATTICE_AUTH", help="none or jwt.")] = "none",
) -> None:
    """Run the Kubernetes operator (kopf): Station, Agent and WorkItem resources; one NATS account per org."""
    import os

    import kopf

    g: Globals = ctx.obj
    if auth not in ("none", "jwt"):
        fail(f"--auth must be 'none' or 'jwt', got {auth!r}")
    os.environ["LATTICE_NATS_URL"] = g.nats.url
    os.environ["LATTICE_AUTH"] = auth
    if station_nats_url:
        os.environ["LATTICE_STATION_NATS_URL"] = station_nats_url
    if station_image:
        os.environ["LATTICE_STATION_IMAGE"] = station_image
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    import station_operator.handlers  # noqa: F401  (registers the handlers)

    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per liveness probe otherwise

    kopf.run(standalone=True, clusterwide=not namespace, namespaces=namespace or (),
             liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None)


auth_app = typer.Typer(help="NATS decentralized auth (JWT mode) for Kubernetes.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")


@auth_app.command("bootstrap")
def auth_bootstrap(
    namespace: Annotated[str, typer.Option("--namespace", "-n", envvar="LATTICE_OPERATOR_NAMESPACE",
                                           help="The operator's namespace.")],
    resolver_dir: Annotated[str, typer.Option("--resolver-dir", help="The resolver's directory in the NATS "
                                              "pod.")] = "/data/jwt",
) -> None:
    """Create, once, the operator and system-account keys (Secret lattice-nats-operator) and write the NATS
    resolver config (ConfigMap lattice-nats-resolver). Idempotent; never prints a key."""
    from station_operator.auth import OPERATOR_SECRET, RESOLVER_CONFIGMAP, bootstrap

    created, operator = asyncio.run(bootstrap(namespace, resolver_dir=resolver_dir))
    console.print(f"{'created' if created else 'kept'} Secret {namespace}/{OPERATOR_SECRET} (operator {operator}); "
                  f"wrote ConfigMap {namespace}/{RESOLVER_CONFIGMAP}", highlight=False)


@app.command()
def demo(
    invocations: Annotated[int, typer.Option("--invocations", "-n", min=1, max=10_000)] = 20,
    stations: Annotated[int, typer.Option("--stations", min=1, max=20)] = 3,
) -> None:
    """Run a whole lattice on this machine: embedded NATS, stations, agents, invocations, teardown."""
    from ..demo import run_demo

    raise typer.Exit(_run(run_demo(console, invocations=invocations, stations=stations)))


def main() -> None:
    app()

"""``lattice submit`` and ``lattice work get|list|watch|cancel``: async work and its records."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..client import LatticeClient
from ..contract.messages import WorkPhase, WorkProgress, WorkRecord
from ..contract.selectors import parse_labels
from ..contract.specs import WorkConstraints, WorkItemSpec, WorkTimeouts
from ..errors import LatticeError
from . import render
from .common import (
    USAGE,
    Globals,
    Output,
    OutputOpt,
    console,
    err_console,
    fail,
    live_view,
    print_item,
    print_items,
    run,
)
from .invoke import check_ids, read_input
from .station import split
from .up import load

#: The longest deadline the command line takes (30 days): anything longer is a mistake, and inf is not a number.
MAX_TIMEOUT_S = 30 * 86_400.0


def register(app: typer.Typer) -> None:
    app.command()(submit)
    work_app = typer.Typer(help="Inspect, cancel and decide for async work.", no_args_is_help=True)
    work_app.command("get")(work_get)
    work_app.command("list")(work_list)
    work_app.command("watch")(work_watch)
    work_app.command("cancel")(work_cancel)
    work_app.command("approve")(work_approve)
    work_app.command("reject")(work_reject)
    work_app.command("reply")(work_reply)
    app.add_typer(work_app, name="work")


def submit(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(help="AGENT INPUT, or INPUT with --capability.")] = None,
    capability: Annotated[list[str] | None, typer.Option("--capability", "-c", help="Required (repeat).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="Required station label k=v.")] = None,
    prefer: Annotated[list[str] | None, typer.Option("--prefer", help="Preferred station label k=v.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, max=MAX_TIMEOUT_S,
                                           help="startToClose, seconds.")] = 600.0,
    schedule_timeout: Annotated[float | None, typer.Option("--schedule-timeout", min=0.001, max=MAX_TIMEOUT_S,
                                                           help="scheduleToStart, seconds.")] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, max=50)] = 2,
    work_id: Annotated[str | None, typer.Option("--id", help="Work id (idempotent resubmission).")] = None,
    filename: Annotated[Path | None, typer.Option("--filename", "-f", help="WorkItem manifest(s) instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Parse INPUT as JSON.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="Show live progress until the result.")] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Submit async work: stored in KV, placed by auction, retried by the witness; prints its id."""
    g: Globals = ctx.obj
    specs: list[tuple[str | None, WorkItemSpec]] = []
    if filename is not None:
        manifests = load([filename])
        if not manifests.work_items:
            fail(f"no WorkItem manifest in {filename}", code=USAGE)
        specs = [(w.metadata.uid or w.name, w.spec) for w in manifests.work_items]
    else:
        args = args or []
        if len(args) != (1 if capability else 2):
            fail("usage: lattice submit AGENT INPUT  |  lattice submit --capability CAP INPUT  |  "
                 "lattice submit -f FILE", code=USAGE)
        check_ids((work_id, "work id"))
        raw = read_input(args[-1], as_json=as_json)
        try:
            spec = WorkItemSpec(
                agent=None if capability else args[0], required_capabilities=split(capability or []), input=raw,
                constraints=WorkConstraints(labels=parse_labels(label or []), prefer_labels=parse_labels(prefer or [])),
                timeouts=WorkTimeouts(start_to_close_seconds=timeout, schedule_to_start_seconds=schedule_timeout),
                max_retries=retries)
        except (ValueError, ValidationError) as exc:
            fail(str(exc), code=USAGE)
        specs = [(work_id, spec)]

    async def main() -> int:
        async with LatticeClient(g.nats, g.org) as client:
            records = [await client.submit(spec, work_id=wid, watch=wait or follow) for wid, spec in specs]
            if not (wait or follow):
                for record in records:
                    if output in (Output.JSON, Output.YAML):
                        print_item(record, output, lambda: "")
                    else:
                        where = f" on {record.station_id}" if record.station_id else ""
                        why = f" ({record.reason})" if record.reason else ""
                        console.print(f"work/{record.work_id} submitted: {record.phase.value}{where}{why}",
                                      markup=False)
                return 0
            code = 0
            for record in records:
                final = await _follow(client, record.work_id, live=follow)
                result = await client.result(final)
                if output in (Output.JSON, Output.YAML):
                    print_item(final, output, lambda: "")
                elif final.phase == WorkPhase.SUCCEEDED:
                    print(result if isinstance(result, str) else json.dumps(result, indent=2))
                    if final.usage:  # on stderr: stdout stays the result alone, for pipes
                        err_console.print(f"usage: {render.usage_text(final.usage)}", markup=False,
                                          highlight=False)
                else:
                    err_console.print(render.work_detail(final, result))
                code = code or (0 if final.phase == WorkPhase.SUCCEEDED else 2)
            return code

    raise typer.Exit(run(main()))


async def _follow(client: LatticeClient, work_id: str, *, live: bool) -> WorkRecord:
    if not live:
        return await client.wait_work(work_id)
    columns = (TextColumn("[bold]{task.fields[phase]:<12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[station]} {task.description}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar, live_view(err_console):
        task = bar.add_task("", total=100, phase="Pending", station="")

        async def on_progress(update: WorkProgress | WorkRecord) -> None:
            if isinstance(update, WorkRecord):
                bar.update(task, phase=update.phase.value, station=update.station_id or "",
                           description=update.reason[:60])
                if update.phase == WorkPhase.SUCCEEDED:
                    bar.update(task, completed=100)
            else:
                bar.update(task, completed=update.percent or 0, description=render.progress_line(update)[:60])

        return await client.wait_work(work_id, on_progress=on_progress)


def work_get(ctx: typer.Context, work_id: str, output: OutputOpt = Output.TABLE,
             journal: Annotated[bool, typer.Option("--journal", help="Also show the run's journal: every model "
                                                   "turn and tool call, by attempt and station.")] = False) -> None:
    """Show one work item: phase, station, attempts, timings, result or error (and its journal)."""
    g: Globals = ctx.obj
    check_ids((work_id, "work id"))

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            record = await client.get_work(work_id)
            if record is None:
                fail(f"no work {work_id!r} in org {g.org!r}")
            result = await client.result(record)
            entries = await client.journal(work_id) if journal else []
        if journal and output in (Output.JSON, Output.YAML):
            # One document: the record, and its journal beside it.
            doc = {"record": render.as_data(record), "journal": render.as_data(entries)}
            print(json.dumps(doc, indent=2) if output == Output.JSON else yaml.safe_dump(doc, sort_keys=False),
                  end="\n" if output == Output.JSON else "")
            return
        print_item(record, output, lambda: render.work_detail(record, result))
        if journal:
            console.print(render.journal_table(entries) if entries else
                          Text("No journal: the run kept none (not an LLM agent, journal off) or it was deleted "
                               "with its record."))

    run(main())


def work_list(
    ctx: typer.Context,
    phase: Annotated[WorkPhase | None, typer.Option("--phase", case_sensitive=False,
                                                    help="Only work in this phase.")] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """List the org's work, oldest first."""
    g: Globals = ctx.obj

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            records = [r for r in await client.list_work() if phase is None or r.phase == phase]
        print_items(records, output, lambda wide: render.work_table(records, wide=wide), f"No work in org {g.org}.")

    run(main())


def work_watch(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.1, max=3600)] = 0.5,
    until_done: Annotated[bool, typer.Option("--until-done", help="Exit when no work is unfinished.")] = False,
) -> None:
    """A live table of the org's work (Ctrl-C to stop)."""
    g: Globals = ctx.obj

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            with Live(console=console, refresh_per_second=4) as live, live_view(console):
                while True:
                    records = await client.list_work()
                    live.update(render.work_table(records[-40:]))
                    if until_done and all(r.phase.terminal for r in records):
                        return
                    await asyncio.sleep(interval)

    run(main())


def work_cancel(ctx: typer.Context, work_id: str) -> None:
    """Cancel work: at once if queued; running work is stopped on its station."""
    g: Globals = ctx.obj
    check_ids((work_id, "work id"))

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            record = await client.cancel_work(work_id)
            if record.phase == WorkPhase.CANCELLED:
                console.print(f"work/{work_id} cancelled", markup=False)
            elif record.phase.terminal:
                console.print(f"work/{work_id} already finished: {record.phase.value}", markup=False)
            else:
                final = await client.wait_work(work_id, timeout_s=30)
                console.print(f"work/{work_id} {final.phase.value.lower()}", markup=False)

    run(main())


ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (the run and the audit log see it).")]


def _decide(g: Globals, work_id: str, *, approved: bool, reply: str | None, reason: str) -> None:
    check_ids((work_id, "work id"))
    if len(reason) > 4096 or (reply is not None and len(reply) > 100_000):
        fail("the reason is at most 4096 characters and a reply at most 100,000", code=USAGE)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            try:
                record = await client.decide(work_id, approved=approved, reply=reply, reason=reason,
                                             by=os.environ.get("USER", ""))
            except LatticeError as exc:
                fail(str(exc))
        said = "answered" if reply is not None else ("approved" if approved else "rejected")
        target = "" if record.work_id == work_id else f" (its child {record.work_id})"
        console.print(f"work/{work_id}{target} {said}: it resumes on the next free station", markup=False)

    run(main())


def work_approve(ctx: typer.Context, work_id: str, reason: ReasonOpt = "") -> None:
    """Approve the tool call a run waits to make (AwaitingApproval): it runs, and the run goes on."""
    _decide(ctx.obj, work_id, approved=True, reply=None, reason=reason)


def work_reject(ctx: typer.Context, work_id: str, reason: ReasonOpt = "") -> None:
    """Reject the tool call a run waits to make: it does not run; the model is told why and goes on."""
    _decide(ctx.obj, work_id, approved=False, reply=None, reason=reason)


def work_reply(ctx: typer.Context, work_id: str,
               text: Annotated[str, typer.Argument(help="The answer to the run's question ('-': stdin).")]) -> None:
    """Answer the question a run asked (AwaitingInput, the ask_user tool): the run goes on with the answer."""
    if text == "-":
        text = sys.stdin.read()
    _decide(ctx.obj, work_id, approved=True, reply=text, reason="")

"""``lattice events``: replay the org's CloudEvents (the audit log) and follow new ones."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from ..client import LatticeClient
from ..contract.events import EVENT_TYPES
from . import render
from .common import USAGE, Globals, console, fail, run
from .invoke import check_ids
from .station import split


class EventsOutput(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def register(app: typer.Typer) -> None:
    app.command()(events)


def known_type(value: str) -> bool:
    """Pure: ``work``, ``work.`` and ``work.requeued`` are known; ``work.bogus`` and ``bogus`` are not."""
    category, _, short = value.rstrip(".").partition(".")
    return category in EVENT_TYPES and (not short or short in EVENT_TYPES[category])  # type: ignore[index]


def events(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    type_: Annotated[list[str] | None, typer.Option("--type", "-t", help="e.g. work.requeued, or work.")] = None,
    work_id: Annotated[str | None, typer.Option("--work", help="Only events of this work item.")] = None,
    output: Annotated[EventsOutput, typer.Option("--output", "-o", case_sensitive=False,
                                                 help="text or json.")] = EventsOutput.TEXT,
) -> None:
    """Replay the org's CloudEvents (the audit log), and follow new ones with --follow."""
    g: Globals = ctx.obj
    types = split(type_ or [])
    for t in types:
        if not known_type(t):
            known = ", ".join(f"{c}.{s}" for c, shorts in EVENT_TYPES.items() for s in shorts)
            fail(f"unknown event type {t!r}: use a category (station, agent, work) or one of {known}", code=USAGE)
    check_ids((work_id, "work id"))
    categories = {t.split(".")[0] for t in types}
    category = categories.pop() if len(categories) == 1 else None

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            async for event in client.events(follow=follow, category=category, work_id=work_id):
                if types and not any(event.short_type == t or event.short_type.startswith(t.rstrip(".") + ".")
                                     for t in types):
                    continue
                if output == EventsOutput.JSON:
                    print(event.model_dump_json(exclude_none=True), flush=True)
                else:
                    console.print(render.event_line(event))

    run(main())

"""``lattice invoke``: one synchronous run on the least loaded station that hosts the agent."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.text import Text

from ..client import InvokeFailed, LatticeClient
from ..contract.errors import InvalidIdError
from ..contract.ids import validate_id
from .common import USAGE, Globals, Output, OutputOpt, err_console, fail, print_item, run

#: What ``lattice invoke``/``submit`` take on their command line or stdin, at most (a bigger input is a file's job).
MAX_INPUT_BYTES = 1024 * 1024


def register(app: typer.Typer) -> None:
    app.command()(invoke)


def read_input(raw: str, *, as_json: bool) -> Any:
    """INPUT as given (``-``: stdin), parsed as JSON with ``--json``; exit 2 saying what is wrong."""
    text = sys.stdin.read(MAX_INPUT_BYTES + 1) if raw == "-" else raw
    if len(text.encode(errors="surrogateescape")) > MAX_INPUT_BYTES:
        fail(f"INPUT is larger than {MAX_INPUT_BYTES} bytes", code=USAGE)
    if not as_json:
        return text
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        fail(f"--json given but INPUT is not JSON: {exc}", code=USAGE)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def check_ids(*pairs: tuple[str | None, str]) -> None:
    """Exit 2 on the first id that would not be a valid subject token or key."""
    try:
        for value, kind in pairs:
            if value is not None:
                validate_id(value, kind)
    except InvalidIdError as exc:
        fail(str(exc), code=USAGE)


def invoke(
    ctx: typer.Context,
    args: Annotated[list[str], typer.Argument(help="AGENT INPUT, or INPUT with --capability. '-' reads stdin.")],
    capability: Annotated[str | None, typer.Option("--capability", "-c")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, max=3600, help="Seconds.")] = 120.0,
    station: Annotated[str | None, typer.Option("--station", help="Run on this station only.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Parse INPUT as JSON.")] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Run an agent synchronously on the least loaded station that hosts it and print the result."""
    g: Globals = ctx.obj
    if len(args) != (1 if capability else 2):
        fail("usage: lattice invoke AGENT INPUT  |  lattice invoke --capability CAP INPUT", code=USAGE)
    agent = None if capability else args[0]
    check_ids((agent, "agent name"), (capability, "capability"), (station, "station id"))
    payload = read_input(args[-1], as_json=as_json)

    async def main() -> None:
        async with LatticeClient(g.nats, g.org) as client:
            try:
                result = await client.invoke(payload, agent=agent, capability=capability, timeout_s=timeout,
                                             station=station)
            except InvokeFailed as exc:
                fail(str(exc), code=2)
        if output in (Output.JSON, Output.YAML):
            print_item(result, output, lambda: "")
        else:
            print(result.output if isinstance(result.output, str) else json.dumps(result.output, indent=2))
            err_console.print(Text(f"{result.agent} on {result.station_id} in {result.duration_ms:.1f} ms",
                                   style="dim"))

    run(main())

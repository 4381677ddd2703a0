"""What every ``lattice`` command shares: the global options it was called with, the consoles, one error printer,
one output helper (``-o table|wide|json|yaml``), one log and signal set-up, and the runner that turns lattice
errors into exit codes.

Exit codes: 0 done; 1 the lattice said no or was unreachable; 2 the command line or an input file is wrong (what
was wrong is printed on one line); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console, RenderableType
from rich.text import Text

from .. import telemetry
from ..errors import LatticeError
from ..natsio.connect import NatsSettings
from . import render

T = TypeVar("T")

#: Bad input: the command line, a manifest, an argument. Click uses 2 for usage errors too.
USAGE = 2


def make_console(*, stderr: bool = False) -> Console:
    """A console for a terminal, or for a pipe or file: there, no wrapping at 80 columns (an error or a path split
    over two lines breaks grep and copy-paste) and no colour."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=100_000, no_color=True)


console = make_console()
err_console = make_console(stderr=True)


@dataclass(frozen=True)
class Globals:
    """The global options, resolved once by the root command and handed to every command in ``ctx.obj``."""

    nats: NatsSettings
    org: str


class Output(enum.StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", case_sensitive=False, help="table, wide, json or yaml.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr, as text (a name pattern such as ``[a-z]`` must not be read as markup),
    and exit with ``code``."""
    err_console.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
    raise typer.Exit(code)


def print_items(items: Sequence[BaseModel], output: Output, table: Callable[[bool], RenderableType],
                empty: str) -> None:
    """A list as a table (``table(wide)``), or as JSON/YAML for programs; ``empty`` when there is nothing."""
    if output in (Output.JSON, Output.YAML):
        print(render.to_json(items) if output == Output.JSON else render.to_yaml(items), end="\n"
              if output == Output.JSON else "")
    elif not items:
        console.print(Text(empty))
    else:
        console.print(table(output == Output.WIDE))


def print_item(item: BaseModel, output: Output, detail: Callable[[], RenderableType]) -> None:
    """One object in detail, or as JSON/YAML."""
    if output in (Output.JSON, Output.YAML):
        print(render.to_json(item) if output == Output.JSON else render.to_yaml(item), end="\n"
              if output == Output.JSON else "")
    else:
        console.print(detail())


# --- logging: one set-up, and never inside a live view ------------------------------------------------------------

_live_consoles: list[Console] = []


@contextlib.contextmanager
def live_view(on: Console) -> Iterator[None]:
    """While a rich ``Live`` (a progress bar, a live table) runs on ``on``, log lines are printed through ``on``, so
    that they appear above the live view instead of tearing it."""
    _live_consoles.append(on)
    try:
        yield
    finally:
        _live_consoles.remove(on)


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            target = _live_consoles[-1] if _live_consoles else err_console
            target.print(Text(self.format(record)), soft_wrap=True)
        except Exception:  # a log line must never take the command down; logging reports it its own way
            self.handleError(record)


def setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR", code=USAGE)
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


def quiet_below_info() -> None:
    """Long-running commands (a station, a controller, the operator) log their INFO lines: what they do."""
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)


# --- running -----------------------------------------------------------------------------------------------------


MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port", envvar="LATTICE_METRICS_PORT", min=0, max=65535, show_default=False,
    help="Serve /metrics (Prometheus text), /healthz and /readyz on this port.")]


@contextlib.asynccontextmanager
async def metrics_endpoint(port: int | None, host: str = "0.0.0.0") -> AsyncIterator[None]:
    """Serve this process's metrics on ``port`` while the block runs (None: not served)."""
    if port is None:
        yield
        return
    from ..station.health import HealthServer

    server = HealthServer(port, host=host)
    try:
        await server.start()
    except OSError as exc:
        raise LatticeError(f"cannot serve metrics on port {port}: {exc.strerror}; choose another --metrics-port") \
            from exc
    try:
        yield
    finally:
        await server.stop()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, for commands that run until stopped (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(coro: Coroutine[Any, Any, T], *, fast: bool = False, service: str = "lattice-cli",
        attributes: dict[str, str] | None = None, serve_metrics: bool = False) -> T:
    """Run ``coro``; a :class:`~station_runtime.errors.LatticeError` becomes its message and exit code 1, Ctrl-C
    exit code 130. ``fast``: on uvloop where installed (stations: the hot path). Traces go out when the
    ``OTEL_*`` variables ask for them, as ``service`` (the spans buffered are exported before the process ends);
    ``serve_metrics``: a long-running process, whose metrics are recorded for its ``/metrics``."""
    if serve_metrics:
        telemetry.configure(service, attributes)
    else:
        telemetry.tracing.configure(service, attributes)
    runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run
    if fast:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    try:
        return runner(coro)
    except LatticeError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        telemetry.tracing.shutdown()

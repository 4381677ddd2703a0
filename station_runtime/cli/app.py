"""``lattice``: the root command, its global options, and the commands by noun.

Each command module (``station``, ``up``, ``get``, ``invoke``, ``work``, ``events``, ``controller``, ``demo``,
``imports``) parses and validates its arguments, then calls library code; :mod:`.common` holds what they share.
Commands of other installed packages (the Kubernetes operator's ``lattice operator`` and ``lattice auth``) are found
through the ``station_lattice.cli`` entry point group, so this package never imports them.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..contract.errors import InvalidIdError
from ..contract.ids import validate_id
from ..natsio.connect import DEFAULT_URL, NatsSettings
from . import controller, demo, events, get, imports, invoke, station, top, up, work
from .common import USAGE, Globals, console, fail, setup_logging

log = logging.getLogger(__name__)

#: Commands that run until stopped: their NATS connection never gives up reconnecting.
LONG_RUNNING = frozenset({"station", "controller", "up", "operator", "top"})

# In a terminal, rich help; in a pipe or a file, plain help (rich would squeeze it into 80 columns and cut
# option names short).
app = typer.Typer(name="lattice", help="Station Lattice: LLM-agent work across a lattice of stations over NATS.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="rich" if sys.stdout.isatty() else None)


def _resolve_url(url: str | None) -> tuple[str, str | None, Path | None]:
    """--nats/LATTICE_NATS_URL, else the lattice that `lattice up` started here, else the default port; with the
    org and admin creds of that lattice when it is the one meant (its creds file is readable by its user only)."""
    from ..local.discovery import read_current

    current = read_current()
    if current and (not url or url == current["url"]):
        creds = current.get("creds")
        return current["url"], current.get("org"), Path(creds) if isinstance(creds, str) else None
    return url or DEFAULT_URL, None, None


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
    setup_logging(log_level)
    url, discovered_org, discovered_creds = _resolve_url(nats_url)
    if org is None:
        org = discovered_org or "default"
    if creds is None and nkey_seed_file is None and token is None and org == discovered_org:
        creds = discovered_creds
    try:
        validate_id(org, "org id")
    except InvalidIdError as exc:
        fail(f"--org: {exc}", code=USAGE)
    for path, what in ((creds, "creds file"), (nkey_seed_file, "nkey seed file")):
        if path is not None and not path.is_file():
            fail(f"{what} {path} does not exist", code=USAGE)
    # A CLI command fails fast when NATS is away; long-running commands never give up.
    attempts = -1 if ctx.invoked_subcommand in LONG_RUNNING else 3
    ctx.obj = Globals(NatsSettings(url=url, token=token, creds_file=creds, nkey_seed_file=nkey_seed_file,
                                   inbox_prefix=inbox_prefix, name="lattice-cli", max_reconnect_attempts=attempts),
                      org)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"station-lattice {__version__}", markup=False)


for module in (station, up, get, invoke, work, events, top, controller, demo, imports):
    module.register(app)


def _plugins() -> None:
    """Commands of other installed packages (``station_lattice.cli`` entry points: ``register(app)``)."""
    for entry in entry_points(group="station_lattice.cli"):
        try:
            entry.load()(app)
        except ImportError as exc:  # e.g. the operator without its extra (kopf): the rest of the CLI still works
            log.debug("lattice: commands of %s not available: %s", entry.value, exc)


def main() -> None:
    _plugins()
    app()

"""``lattice station run``: one station runtime, the entry point of station pods and of ``lattice up``."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from ..contract.selectors import LabelSelector, parse_labels, parse_selector
from .common import USAGE, Globals, fail, quiet_below_info, run


def split(values: list[str]) -> list[str]:
    """``--x a --x b,c`` -> ``[a, b, c]``."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    station_app = typer.Typer(help="Run a station runtime.", no_args_is_help=True)
    station_app.command("run")(station_run)
    app.add_typer(station_app, name="station")


def station_run(
    ctx: typer.Context,
    station_id: Annotated[str, typer.Option("--station-id", envvar="LATTICE_STATION_ID", help="Stable id.")],
    capability: Annotated[list[str] | None, typer.Option("--capability", envvar="LATTICE_CAPABILITIES",
                                                         help="Capability (repeat, or comma-separated).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", envvar="LATTICE_LABELS",
                                                    help="key=value (repeat, or comma-separated).")] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", envvar="LATTICE_MAX_CONCURRENCY",
                                                 min=1, max=10_000)] = 4,
    max_queue: Annotated[int | None, typer.Option("--max-queue", envvar="LATTICE_MAX_QUEUE", min=0,
                                                  max=1_000_000)] = None,
    agent_selector: Annotated[str, typer.Option("--agent-selector", envvar="LATTICE_AGENT_SELECTOR",
                                                help="Label selector for agents, e.g. 'team=a,tier in (x,y)'.")] = "",
    agent_selector_json: Annotated[str, typer.Option("--agent-selector-json", envvar="LATTICE_AGENT_SELECTOR_JSON",
                                                     help="Agent selector as JSON (matchLabels/matchExpressions).",
                                                     hidden=True)] = "",
    heartbeat_interval: Annotated[float, typer.Option("--heartbeat-interval", envvar="LATTICE_HEARTBEAT_INTERVAL",
                                                      min=0.05, max=3600, help="Seconds.")] = 2.0,
    drain_timeout: Annotated[float, typer.Option("--drain-timeout", envvar="LATTICE_DRAIN_TIMEOUT", min=0, max=86_400,
                                                 help="Seconds to finish in-flight work on SIGTERM.")] = 30.0,
    health_port: Annotated[int | None, typer.Option("--health-port", envvar="LATTICE_HEALTH_PORT", min=0, max=65535,
                                                    help="Serve /healthz, /readyz and /metrics on this port.")] = None,
) -> None:
    """Run one station until SIGTERM (then drain). The entry point of station pods and of `lattice up`."""
    from ..station.runtime import run_station
    from ..station.settings import StationSettings

    g: Globals = ctx.obj
    try:
        selector: LabelSelector | None = (LabelSelector.model_validate_json(agent_selector_json)
                                          if agent_selector_json else parse_selector(agent_selector))
        settings = StationSettings(
            org=g.org, station_id=station_id, nats=g.nats, capabilities=tuple(split(capability or [])),
            labels=parse_labels(label or []), max_concurrency=max_concurrency, max_queue=max_queue,
            agent_selector=selector, heartbeat_interval_s=heartbeat_interval, drain_timeout_s=drain_timeout,
            health_port=health_port)
    except (ValueError, ValidationError) as exc:
        fail(str(exc), code=USAGE)
    quiet_below_info()
    raise typer.Exit(run(run_station(settings), fast=True, service="lattice-station", serve_metrics=True,
                         attributes={"service.instance.id": settings.station_id, "lattice.org": settings.org}))

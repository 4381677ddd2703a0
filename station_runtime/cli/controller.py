"""``lattice controller run``: the auctioneer and witness of an org, on their own (several may run at once)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..client import LatticeClient
from ..work.controller import WorkController
from ..work.policy import WitnessPolicy
from .common import Globals, MetricsPort, metrics_endpoint, quiet_below_info, run, stop_on_signals


def register(app: typer.Typer) -> None:
    controller_app = typer.Typer(help="Run the work controller (auctioneer + witness).", no_args_is_help=True)
    controller_app.command("run")(controller_run)
    app.add_typer(controller_app, name="controller")


def controller_run(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.05, max=3600, help="Witness sweep, seconds.")] = 1.0,
    stuck_threshold: Annotated[float, typer.Option("--stuck-threshold", min=0.1, max=30 * 86_400,
                                                   help="Seconds without progress before requeue.")] = 600.0,
    accept_timeout: Annotated[float, typer.Option("--accept-timeout", min=0.1, max=3600)] = 5.0,
    metrics_port: MetricsPort = None,
) -> None:
    """Run the work controller until SIGTERM: it schedules what nobody scheduled and witnesses stuck work.
    Several may run at once."""
    g: Globals = ctx.obj
    quiet_below_info()

    async def main() -> int:
        stop = stop_on_signals()
        policy = WitnessPolicy(accept_timeout_s=accept_timeout, stuck_threshold_s=stuck_threshold)
        async with metrics_endpoint(metrics_port), \
                LatticeClient(g.nats, g.org, create_state=True, policy=policy, source="controller") as client, \
                WorkController(await client.org_work(), interval_s=interval):
            await stop.wait()
        return 0

    raise typer.Exit(run(main(), service="lattice-controller", serve_metrics=True, attributes={"lattice.org": g.org}))

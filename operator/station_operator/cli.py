"""The operator's ``lattice`` commands: ``lattice operator`` and ``lattice auth bootstrap``.

``station_runtime`` never imports this package (an import-linter contract says so): the ``lattice`` command finds
these commands through the ``station_lattice.cli`` entry point group, so a runtime installed without the operator
extra (kopf, kubernetes) simply has no ``operator`` command.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated

import typer

from station_runtime.cli.common import Globals, console, fail, quiet_below_info


def register(app: typer.Typer) -> None:
    """Add the operator's commands to the ``lattice`` app (the ``station_lattice.cli`` entry point)."""
    app.command("operator")(operator_run)
    auth_app = typer.Typer(help="NATS decentralized auth (JWT mode) for Kubernetes.", no_args_is_help=True)
    auth_app.command("bootstrap")(auth_bootstrap)
    app.add_typer(auth_app, name="auth")


def operator_run(
    ctx: typer.Context,
    namespace: Annotated[list[str] | None, typer.Option("--namespace", "-n", help="Watch this namespace (repeat); "
                                                        "default: all namespaces.")] = None,
    liveness_port: Annotated[int, typer.Option("--liveness-port", min=0, max=65535,
                                               help="Serve /healthz on this port; 0: off.")] = 8081,
    station_nats_url: Annotated[str | None, typer.Option("--station-nats-url", envvar="LATTICE_STATION_NATS_URL",
                                                         help="NATS URL as station pods see it.")] = None,
    station_image: Annotated[str | None, typer.Option("--station-image", envvar="LATTICE_STATION_IMAGE")] = None,
    auth: Annotated[str | None, typer.Option("--auth", envvar="LATTICE_AUTH", help="none or jwt.")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", envvar="LATTICE_METRICS_PORT", min=0,
                                                     max=65535, show_default=False,
                                                     help="Serve /metrics on this port.")] = None,
) -> None:
    """Run the Kubernetes operator (kopf): Station, Agent and WorkItem resources; one NATS account per org."""
    from .config import OperatorSettings
    from .handlers import run

    g: Globals = ctx.obj
    if auth not in (None, "none", "jwt"):
        fail(f"--auth must be 'none' or 'jwt', got {auth!r}", code=2)
    try:
        settings = OperatorSettings.from_env(nats=dataclasses.replace(g.nats, name="lattice-operator"), auth=auth,
                                             station_nats_url=station_nats_url, station_image=station_image,
                                             metrics_port=metrics_port or None)
    except ValueError as exc:
        fail(str(exc), code=2)
    quiet_below_info()
    run(settings, namespaces=namespace or [], liveness_port=liveness_port)


def auth_bootstrap(
    namespace: Annotated[str, typer.Option("--namespace", "-n", envvar="LATTICE_OPERATOR_NAMESPACE",
                                           help="The operator's namespace.")],
    resolver_dir: Annotated[str, typer.Option("--resolver-dir", help="The resolver's directory in the NATS "
                                              "pod.")] = "/data/jwt",
) -> None:
    """Create, once, the operator and system-account keys (Secret lattice-nats-operator) and write the NATS
    resolver config (ConfigMap lattice-nats-resolver). Idempotent; never prints a key."""
    from .auth import OPERATOR_SECRET, RESOLVER_CONFIGMAP, bootstrap

    created, operator = asyncio.run(bootstrap(namespace, resolver_dir=resolver_dir))
    console.print(f"{'created' if created else 'kept'} Secret {namespace}/{OPERATOR_SECRET} (operator {operator}); "
                  f"wrote ConfigMap {namespace}/{RESOLVER_CONFIGMAP}", highlight=False, markup=False)

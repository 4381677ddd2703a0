"""Operator settings, read once by the ``lattice operator`` command: its flags, else the ``LATTICE_*`` environment
variables (the Helm chart sets those), else the defaults below; then passed down, never read again."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.state import StateLimits


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from exc


#: The operator's OTEL_* variables that station pods get: where traces go and how they are sampled. Not the
#: exporter's headers (they often hold a vendor's token: pods would carry it in plain text in their spec), nor the
#: operator's own service name and resource attributes (a station names itself).
STATION_OTEL_VARIABLES = frozenset({
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"})


def _flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _port(name: str) -> int | None:
    raw = os.environ.get(name, "")
    if raw in ("", "0", "none"):
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{name} must be a port number (1-65535), or 0 for none, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class OperatorSettings:
    #: How the operator itself reaches NATS.
    nats: NatsSettings = field(default_factory=NatsSettings)
    #: How station pods reach NATS (a Service DNS name in a cluster; the same loopback URL in the tests).
    station_nats_url: str = "nats://nats:4222"
    station_image: str = "ghcr.io/station-lattice/station-lattice:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    #: none: NATS without auth (development); jwt: one NATS account per org, one user per station.
    auth: Literal["none", "jwt"] = "none"
    #: Namespace holding the operator's own secrets (operator and per-org account keys).
    namespace: str = "lattice-system"
    station_heartbeat_s: float = 2.0
    station_drain_timeout_s: float = 30.0
    #: Port of the station pods' health endpoint; None disables probes (the test kubelet shares one host).
    station_health_port: int | None = 8080
    #: Status resync of Stations and Agents (presence changes every heartbeat; status is patched on change).
    resync_s: float = 5.0
    #: The WorkItem mirror's safety net: every WorkItem's status is re-derived from its record this often (the
    #: mirror follows the work bucket; this catches what a lost watch message would leave stale).
    work_resync_s: float = 15.0
    #: Finished WorkItems are deleted this long after they finished; 0 keeps them.
    work_item_ttl_s: float = 3600.0
    witness_interval_s: float = 1.0
    #: How long a station's NATS creds last (JWT mode); they are renewed when a third is left.
    station_creds_ttl_s: float = 24 * 3600.0
    #: The operator's own /metrics (and /healthz) port; None: not served.
    metrics_port: int | None = None
    #: The OTEL_* variables station pods get (:data:`STATION_OTEL_VARIABLES` of the operator's own), so that one
    #: chart value (telemetry.otlpEndpoint) sends every process's traces to one Collector.
    station_otel_env: tuple[tuple[str, str], ...] = ()
    #: How many NATS servers keep each of an org's stores (``LATTICE_STATE_REPLICAS``; the chart sets it to its
    #: cluster size). None: new stores are R1 and existing ones are left as they are.
    state_replicas: int | None = None
    #: Several replicas, one active: a Lease in ``namespace`` decides which (``LATTICE_LEADER_ELECTION``; the
    #: chart turns it on). Off: this process acts alone (``lattice operator`` by hand, one replica).
    leader_election: bool = False
    #: A standby takes over this long after the active replica's last renewal of the Lease.
    lease_duration_s: float = 15.0

    @classmethod
    def from_env(cls, *, nats: NatsSettings | None = None, **overrides: Any) -> OperatorSettings:
        """From the environment; ``overrides`` (the command's flags, None where not given) win."""
        env = os.environ
        given = {k: v for k, v in overrides.items() if v is not None}
        auth = given.pop("auth", None) or env.get("LATTICE_AUTH", "none")
        if auth not in ("none", "jwt"):
            raise ValueError(f"LATTICE_AUTH must be 'none' or 'jwt', got {auth!r}")
        health = env.get("LATTICE_STATION_HEALTH_PORT", "8080")
        nats = nats or NatsSettings.from_env(name="lattice-operator")
        return dataclasses.replace(cls(
            nats=nats,
            station_nats_url=env.get("LATTICE_STATION_NATS_URL", nats.url),
            station_image=env.get("LATTICE_STATION_IMAGE", cls.station_image),
            image_pull_policy=env.get("LATTICE_IMAGE_PULL_POLICY", cls.image_pull_policy),
            auth=auth,  # type: ignore[arg-type]
            namespace=env.get("LATTICE_OPERATOR_NAMESPACE", cls.namespace),
            station_heartbeat_s=_float("LATTICE_STATION_HEARTBEAT", cls.station_heartbeat_s),
            station_drain_timeout_s=_float("LATTICE_STATION_DRAIN_TIMEOUT", cls.station_drain_timeout_s),
            station_health_port=int(health) if health not in ("", "none", "0") else None,
            resync_s=_float("LATTICE_RESYNC", cls.resync_s),
            work_resync_s=_float("LATTICE_WORK_RESYNC", cls.work_resync_s),
            work_item_ttl_s=_float("LATTICE_WORKITEM_TTL", cls.work_item_ttl_s),
            witness_interval_s=_float("LATTICE_WITNESS_INTERVAL", cls.witness_interval_s),
            station_creds_ttl_s=_float("LATTICE_STATION_CREDS_TTL", cls.station_creds_ttl_s),
            metrics_port=_port("LATTICE_METRICS_PORT"),
            station_otel_env=tuple(sorted((k, v) for k, v in env.items() if k in STATION_OTEL_VARIABLES)),
            state_replicas=StateLimits.from_env().replicas,
            leader_election=_flag("LATTICE_LEADER_ELECTION"),
            lease_duration_s=_float("LATTICE_LEADER_LEASE", cls.lease_duration_s),
        ), **given)

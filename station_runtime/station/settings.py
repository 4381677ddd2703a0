"""Station settings, read once at the entry point (flags and ``LATTICE_*`` env vars) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..contract.ids import validate_id
from ..contract.selectors import LabelSelector
from ..natsio.connect import NatsSettings


@dataclass(frozen=True)
class StationSettings:
    org: str
    station_id: str
    nats: NatsSettings = field(default_factory=NatsSettings)
    capabilities: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    #: Agent runs at once; more requests wait in a queue of ``max_queue``, beyond that they get ``busy``.
    max_concurrency: int = 4
    max_queue: int | None = None
    agent_selector: LabelSelector | None = None
    #: Presence heartbeat. The registry forgets a station after ~3 missed beats.
    heartbeat_interval_s: float = 2.0
    #: On SIGTERM, how long in-flight work may take to finish before it is abandoned.
    drain_timeout_s: float = 30.0
    #: Port of the HTTP health endpoint (/healthz, /readyz); None: no endpoint.
    health_port: int | None = None

    def __post_init__(self) -> None:
        validate_id(self.org, "org id")
        validate_id(self.station_id, "station id")
        for cap in self.capabilities:
            validate_id(cap, "capability")
        if self.max_concurrency < 1:
            raise ValueError(f"max concurrency must be at least 1, got {self.max_concurrency}")
        if self.heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {self.heartbeat_interval_s}")

    @property
    def queue_limit(self) -> int:
        return self.max_queue if self.max_queue is not None else self.max_concurrency * 8

    @property
    def presence_ttl_s(self) -> float:
        return self.heartbeat_interval_s * 3

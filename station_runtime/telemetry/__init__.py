"""Telemetry: traces (:mod:`.tracing`) and metrics (:mod:`.metrics`), both through the OpenTelemetry API.

A leaf of the runtime: it imports nothing of the lattice, and every layer may use it.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import metrics, tracing


def configure(service: str, attributes: Mapping[str, str] | None = None) -> None:
    """What a long-running process (a station, ``lattice up``, a controller, the operator) does first: metrics
    always (served at ``/metrics``), traces when the ``OTEL_*`` variables ask for them."""
    metrics.configure(service, attributes)
    tracing.configure(service, attributes)


__all__ = ["configure", "metrics", "tracing"]

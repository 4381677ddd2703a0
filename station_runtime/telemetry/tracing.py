"""Traces: one piece of work followed across processes, from its submission (or the WorkItem the operator
reconciles) to the model call.

Configured only by the standard ``OTEL_*`` variables. Tracing is on when ``OTEL_TRACES_EXPORTER`` names an
exporter (``otlp``, ``console``) or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off.
Unlike the SDK's own default (``otlp`` when nothing is said), a process with no ``OTEL_*`` variable traces
nothing: no SDK is installed, :func:`span` hands back one shared no-op, no header is added to a message, and the
hot path costs what it cost before tracing existed. The sampler (``OTEL_TRACES_SAMPLER``), the batch processor
(``OTEL_BSP_*``), the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and the exporter's endpoint,
headers and timeout are read by the SDK itself, as it documents them.

Context travels as W3C trace context: in the ``traceparent``/``tracestate`` headers of the NATS messages of the
work path and of the model and MCP HTTP calls, and in the work record (its ``traceparent`` is the submission's
span), so a station that restarts, or a witness that requeues, still joins the work's trace.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

#: The instrumentation scope of every span the lattice makes.
SCOPE: Final = "station_lattice"
TRACEPARENT_RE: Final = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_OFF: Final = nullcontext(INVALID_SPAN)
#: W3C trace context only: the lattice carries no baggage, and the global propagator's baggage half cost every
#: message a second inject or extract (so OTEL_PROPAGATORS is not read; docs/observability.md says so).
_W3C: Final = TraceContextTextMapPropagator()
SWITCH_INTERVAL_S: Final = 0.001
_SPAN_KINDS: Final = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT, "server": SpanKind.SERVER,
                      "producer": SpanKind.PRODUCER, "consumer": SpanKind.CONSUMER}


class _State:
    enabled = False
    service = ""
    provider: Any = None
    #: One tracer for the process: getting one costs more than a span (a new scope and tracer each time).
    tracer: Any = None


_state = _State()


def enabled() -> bool:
    return _state.enabled


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Pure: whether these variables ask for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if exporters:
        return exporters != ["none"]
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(service: str, attributes: Mapping[str, str] | None = None) -> bool:
    """Install the SDK for this process if the environment asks for traces (once; later calls are no-ops).
    ``service`` names the process when ``OTEL_SERVICE_NAME`` does not. A configuration that cannot work (an
    exporter that is not installed) is logged with what to do, and the process runs untraced."""
    if _state.provider is not None or not wanted():
        return _state.enabled
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    try:
        exporters = _exporters()
    except ValueError as exc:
        log.warning("tracing is off: %s", exc)
        return False
    resource = Resource.create(dict(attributes or {}))
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # The exporter's thread encodes a batch while holding the GIL; an event loop woken by a message meanwhile
    # waits for the thread to give the GIL up, by default after up to 5 ms. 1 ms bounds that stall (the
    # tracing-on work p99 in docs/benchmarks.md), at the cost of more switches while both run.
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
    _state.provider, _state.enabled, _state.service = provider, True, service
    _state.tracer = provider.get_tracer(SCOPE)
    log.info("tracing on: %s to %s", resource.attributes.get(SERVICE_NAME),
             ", ".join(type(e).__name__ for e in exporters))
    return True


def _exporters() -> list[Any]:
    names = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()] or ["otlp"]
    out: list[Any] = []
    for name in names:
        if name == "none":
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter
            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
            if protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                out.append(OTLPSpanExporter())
            elif protocol == "grpc":
                try:
                    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                        OTLPSpanExporter as GrpcExporter,
                    )
                except ImportError:
                    raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package "
                                     "opentelemetry-exporter-otlp-proto-grpc; install it, or use http/protobuf "
                                     "(the Collector's port 4318)") from None
                out.append(GrpcExporter())
            else:
                raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf "
                                 "or grpc")
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}: use otlp, console or none")
    return out


def shutdown() -> None:
    """Export what is buffered and stop (the end of a process; also run at exit by the SDK)."""
    if _state.provider is not None:
        _state.provider.shutdown()


# --- spans -----------------------------------------------------------------------------------------------------


def span(name: str, *, kind: str = "internal", parent: otel_context.Context | None = None,
         attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Span]:
    """A span around a block, current inside it (so what the block starts is its child). Off: one shared no-op.
    An exception leaving the block is recorded and sets the status to error."""
    if not _state.enabled:
        return _OFF
    return _state.tracer.start_as_current_span(  # type: ignore[no-any-return]
        name, context=parent, kind=_SPAN_KINDS[kind],
        attributes={k: v for k, v in (attributes or {}).items() if v is not None})


def start(name: str, *, kind: str = "internal", parent: otel_context.Context | None = None,
          attributes: Mapping[str, Any] | None = None) -> Span:
    """A span started now and ended later by :func:`use` (one that outlives the block that starts it: a run
    claimed in a message handler and run by a task). Off: the shared no-op span."""
    if not _state.enabled:
        return INVALID_SPAN
    return _state.tracer.start_span(  # type: ignore[no-any-return]
        name, context=parent, kind=_SPAN_KINDS[kind],
        attributes={k: v for k, v in (attributes or {}).items() if v is not None})


def use(current: Span, *, end: bool = True) -> AbstractContextManager[Span]:
    """Make a span from :func:`start` current for a block (what the block does is its child; a task created in
    the block inherits it), and end it when the block ends unless ``end`` is False."""
    if not _state.enabled or current is INVALID_SPAN:
        return _OFF
    return trace.use_span(current, end_on_exit=end)


def failed(current: Span, description: str) -> None:
    """Mark a span as failed without an exception (an outcome that is an error: a tool's error result)."""
    if _state.enabled:
        current.set_status(Status(StatusCode.ERROR, description[:200]))


# --- propagation -----------------------------------------------------------------------------------------------


def headers(base: dict[str, str] | None = None) -> dict[str, str] | None:
    """``base`` with the current span's W3C trace context added, for a message or an HTTP request; off (or no
    current span): ``base`` as it is."""
    if not _state.enabled:
        return base
    carrier = dict(base or {})
    _W3C.inject(carrier)
    return carrier or base


def incoming(carrier: Mapping[str, str] | None, traceparent: str | None = None) -> otel_context.Context | None:
    """The context a received message (its headers) or a record (its ``traceparent``) continues; the headers win,
    being the nearer parent. Off, or neither carries one: None (a new trace, or none)."""
    if not _state.enabled:
        return None
    if carrier and "traceparent" in carrier:
        return _W3C.extract(carrier)
    if traceparent and TRACEPARENT_RE.match(traceparent):
        return _W3C.extract({"traceparent": traceparent})
    return None


def current_traceparent() -> str | None:
    """The current span as a ``traceparent`` value, or None when there is none being recorded."""
    if not _state.enabled:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def new_traceparent() -> str:
    """For work submitted outside any trace: the current span's context when tracing, else random ids (sampled,
    so that stations that trace still group the work's spans under one trace id)."""
    return current_traceparent() or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str | None) -> str | None:
    """Pure: the trace id of a ``traceparent`` value, or None when it is not one."""
    match = TRACEPARENT_RE.match(traceparent or "")
    return match.group(1) if match else None

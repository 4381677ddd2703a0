"""Metrics, through the OpenTelemetry metrics API, served as Prometheus text at ``/metrics``.

Every instrument is declared here, once, so that the names, units and label sets are one list a person can read
(docs/observability.md has it as a table). Names follow OpenTelemetry (dotted, a unit in UCUM); the Prometheus
exporter turns ``lattice.work.run.duration`` with unit ``s`` into ``lattice_work_run_duration_seconds`` and a
counter into ``..._total``. Label sets are bounded: org, agent, model, tool, station, phase, outcome and error
kinds, never a work id. The model-call metrics are the GenAI semantic conventions' own.

Until :func:`configure` installs the SDK (stations, ``lattice up``, ``lattice controller``, the operator), the
instruments are the API's proxies and recording costs next to nothing: a one-shot CLI command measures nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

SCOPE: Final = "station_lattice"
#: Seconds, from a fast placement (sub-millisecond) to a long agent run (ten minutes).
SECONDS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0, 300.0, 600.0)
TOKENS: Final = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)

_meter = metrics.get_meter(SCOPE)

#: Label sets one counter keeps at most; past it, new ones are added to an ``overflow="true"`` series (labels are
#: bounded by design: this is the guard against a bug that would put an unbounded value in one).
MAX_SERIES: Final = 2_000  # the SDK's own cardinality limit per instrument: past it, its overflow series


class Counter:
    """A monotonic counter kept as plain numbers, read by the SDK only when Prometheus scrapes (an observable
    counter). An ``add`` on the hot path is a dict update: the SDK's own counter spent ~90 Python calls per
    measurement (exemplars, attribute checks, hashing), a tenth of a quick work item's CPU for the seven an item
    recorded. Callers pass label dicts with their keys in one order (literals), which makes the key a tuple."""

    def __init__(self, name: str, unit: str = "", description: str = "") -> None:
        self.name = name
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        _meter.create_observable_counter(name, callbacks=[self._observe], unit=unit, description=description)

    def add(self, amount: float, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        values = self._values
        if key not in values and len(values) >= MAX_SERIES:
            key = (("overflow", "true"),)
        values[key] = values.get(key, 0) + amount

    def value(self, **attributes: str) -> float:
        """The count of one label set (tests, and whoever wants a number without a scrape)."""
        return self._values.get(tuple(attributes.items()), 0)

    def _observe(self, _: CallbackOptions) -> Iterable[Observation]:
        # Called off the event loop (the scrape's thread): one copy of the items, then read at leisure.
        return [Observation(v, dict(k)) for k, v in list(self._values.items())]


class Observed:
    """An observable gauge fed by whoever has the numbers right now (a station its slots, a controller its
    index): each source gives ``(value, labels)`` pairs when Prometheus scrapes. Sources come and go with the
    parts that own them (a stopped station removes its own)."""

    def __init__(self, name: str, unit: str, description: str) -> None:
        self._sources: dict[int, Callable[[], Iterable[tuple[float, Mapping[str, str]]]]] = {}
        self._lock = threading.Lock()
        _meter.create_observable_gauge(name, callbacks=[self._observe], unit=unit, description=description)

    def add(self, source: Callable[[], Iterable[tuple[float, Mapping[str, str]]]]) -> Callable[[], None]:
        """Add a source; returns the function that removes it."""
        key = id(source)
        with self._lock:
            self._sources[key] = source

        def remove() -> None:
            with self._lock:
                self._sources.pop(key, None)

        return remove

    def _observe(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            sources = list(self._sources.values())
        out: list[Observation] = []
        for source in sources:
            try:
                out.extend(Observation(value, dict(labels)) for value, labels in source())
            except Exception:  # a source that fails must not take the scrape with it
                continue
        return out


# --- work (the controller's index sees every change; the station sees its own runs) -----------------------------
WORK_SUBMITTED = Counter("lattice.work.submitted", unit="{item}",
                                       description="Work items created (seen by the org's controller).")
WORK_FINISHED = Counter("lattice.work.finished", unit="{item}",
                                      description="Work items that reached a final phase (seen by the controller), "
                                      "by phase: succeeded, failed, cancelled.")
WORK_REQUEUED = Counter("lattice.work.requeued", unit="{item}",
                                      description="Attempts given up and placed again, by who decided: witness (a lost "
                                      "station, a stuck or timed-out attempt), station (a retryable failure), drain "
                                      "(handed back by a stopping station).")
WORK_ESCALATED = Counter("lattice.work.escalated", unit="{item}",
                                       description="Work failed for good after its retries, by who decided (witness, "
                                       "station).")
RUNS = Counter("lattice.station.runs", unit="{attempt}",
                             description="Attempts a station ended, by agent and outcome.")
SCHEDULE_TO_START = _meter.create_histogram(
    "lattice.work.schedule_to_start.duration", unit="s", explicit_bucket_boundaries_advisory=SECONDS,
    description="From a work item's creation to the start of the attempt that ran it.")
RUN_DURATION = _meter.create_histogram("lattice.work.run.duration", unit="s",
                                       explicit_bucket_boundaries_advisory=SECONDS,
                                       description="One attempt's run on its station, by agent and outcome.")
END_TO_END = _meter.create_histogram("lattice.work.end_to_end.duration", unit="s",
                                     explicit_bucket_boundaries_advisory=SECONDS,
                                     description="From creation to the final outcome, by agent and outcome.")

# --- placement ---------------------------------------------------------------------------------------------------
AUCTION_CLOSE = _meter.create_histogram("lattice.auction.close.duration", unit="s",
                                        explicit_bucket_boundaries_advisory=SECONDS,
                                        description="From an auction's request to its close.")
OFFERS = Counter("lattice.placement.offers", unit="{offer}",
                               description="New work offered to the expected winner first, by taken (true/false).")
BIDS = Counter("lattice.station.bids", unit="{bid}",
                             description="Bids a station sent, by declined (true/false).")

# --- agents ------------------------------------------------------------------------------------------------------
GENAI_DURATION = _meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                         explicit_bucket_boundaries_advisory=SECONDS,
                                         description="GenAI operation duration (one model call).")
GENAI_TOKENS = _meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                       explicit_bucket_boundaries_advisory=TOKENS,
                                       description="Tokens per model call, by gen_ai.token.type (input, output).")
TOKENS_USED = Counter("lattice.agent.tokens", unit="{token}",
                                    description="Tokens spent, by agent, model and type (input, output, "
                                    "cache_read, cache_write).")
COST = Counter("lattice.agent.cost.usd", description="US dollars the tokens spent cost (where the "
                             "agent's model has a price), by agent and model.")
MODEL_ERRORS = Counter("lattice.model.errors", unit="{call}",
                                     description="Model calls that failed, by agent, model and error.type "
                                     "(rate_limited, unavailable, rejected).")
TOOL_DURATION = _meter.create_histogram("lattice.tool.duration", unit="s",
                                        explicit_bucket_boundaries_advisory=SECONDS,
                                        description="One tool call, by agent, tool and outcome (ok, error).")

# --- the lattice's own health ---------------------------------------------------------------------------------
EVENTS_UNPUBLISHED = Counter("lattice.events.unpublished", unit="{event}",
                                           description="Audit events that could not be published.")
MESSAGES_DROPPED = Counter("lattice.messages.dropped", unit="{message}",
                                         description="Messages dropped unread, by reason (malformed, forged) and "
                                         "kind.")


WORK_ITEMS = Observed("lattice.work.items", "{item}", "Unfinished work items by phase (the queue's depth: "
                      "pending, scheduling, unschedulable, assigned, running).")
WAITING_AGE = Observed("lattice.work.waiting.age", "s", "How long the oldest work still waiting for a station "
                       "(pending, scheduling, unschedulable) has waited since it was created; 0: none waits.")
# The stations as the org's controller sees them (their heartbeats): one scrape shows the whole org.
STATION_LOAD = Observed("lattice.station.load", "{run}", "Runs each station holds (its last heartbeat).")
STATION_CAPACITY = Observed("lattice.station.capacity", "{run}", "Runs each station can hold at once.")
HEARTBEAT_AGE = Observed("lattice.station.heartbeat.age", "s", "Seconds since each station's last heartbeat, by "
                         "station and status.")


class _State:
    reader: Any = None


_state = _State()


def configure(service: str = "lattice", attributes: Mapping[str, str] | None = None) -> None:
    """Install the metrics SDK with a Prometheus reader for this process (once). ``service`` (unless
    ``OTEL_SERVICE_NAME`` says otherwise) and ``attributes`` describe the process in ``target_info``."""
    if _state.reader is not None:
        return
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create(dict(attributes or {}))
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    # No otel_scope_* labels: every instrument is ours (one scope), and they would only lengthen each series.
    _state.reader = PrometheusMetricReader(scope_info_enabled=False)
    # No exemplars: nothing here reads them, and sampling one costs every measurement a context lookup.
    metrics.set_meter_provider(MeterProvider(metric_readers=[_state.reader], resource=resource,
                                             exemplar_filter=AlwaysOffExemplarFilter()))


def configured() -> bool:
    return _state.reader is not None


def render() -> bytes:
    """Every metric of this process in the Prometheus text format (with the process's own: memory, CPU, fds)."""
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY)


CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

"""Pure parts of telemetry: when the environment asks for traces, trace ids, label sets, and what an unconfigured
process does (nothing, at no cost)."""

from __future__ import annotations

import pytest

from station_runtime.telemetry import metrics, tracing

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(("env", "wanted"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),  # naming a service asks for nothing
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
])
def test_traces_only_when_the_environment_asks(env: dict[str, str], wanted: bool) -> None:
    assert tracing.wanted(env) is wanted


def test_trace_ids_come_from_valid_traceparents_only() -> None:
    assert tracing.trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == \
        "0af7651916cd43dd8448eb211c80319c"
    for bad in (None, "", "garbage", "00-XYZ-b7ad6b7169203331-01",
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"):
        assert tracing.trace_id(bad) is None


def test_untraced_process_costs_nothing_and_adds_no_headers() -> None:
    # This test process has no OTEL_* variables: the API's no-op, one shared object, no header added.
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b")
    with tracing.span("lattice.run") as span:
        assert not span.is_recording()
    assert tracing.headers() is None and tracing.headers({"k": "v"}) == {"k": "v"}
    assert tracing.incoming({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}) is None
    # Work submitted untraced still gets a valid, sampled traceparent: traced stations group its spans by it.
    assert tracing.trace_id(tracing.new_traceparent()) is not None
    assert tracing.new_traceparent() != tracing.new_traceparent()


def test_a_failing_gauge_source_does_not_take_the_scrape_with_it() -> None:
    gauge = metrics.Observed("lattice.test.gauge", "{x}", "test")

    def broken() -> list[tuple[float, dict[str, str]]]:
        raise RuntimeError("boom")

    remove_broken = gauge.add(broken)
    remove_good = gauge.add(lambda: [(2.0, {"phase": "pending"})])
    observed = list(gauge._observe(None))  # type: ignore[arg-type]
    assert [(o.value, o.attributes) for o in observed] == [(2.0, {"phase": "pending"})]
    remove_broken()
    remove_good()
    assert list(gauge._observe(None)) == []  # type: ignore[arg-type]


def test_every_metric_is_documented() -> None:
    # docs/observability.md lists every instrument by its Prometheus name: a new one without a row fails here.
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    source = (root / "station_runtime" / "telemetry" / "metrics.py").read_text()
    docs = (root / "docs" / "observability.md").read_text()
    found = re.findall(r'(Counter|create_histogram)\(\s*"([^"]+)"(?:,\s*unit="([^"]*)")?', source)
    gauges = re.findall(r'Observed\("([^"]+)",\s*"([^"]*)"', source)
    assert len(found) >= 15 and len(gauges) >= 5
    suffix = {"s": "_seconds"}
    names = [name.replace(".", "_") + suffix.get(unit, "") + ("_total" if kind == "Counter" else "")
             for kind, name, unit in found]
    names += [name.replace(".", "_") + suffix.get(unit, "") for name, unit in gauges]
    missing = [n for n in names if n not in docs]
    assert not missing, f"docs/observability.md does not list {missing}"


def test_counters_are_plain_numbers_with_a_bound_on_label_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_SERIES", 3)
    counter = metrics.Counter("lattice.test.counter")
    for agent in ("a", "b", "a", "c", "d", "e"):
        counter.add(1, {"agent": agent})
    assert (counter.value(agent="a"), counter.value(agent="c"), counter.value(overflow="true")) == (2, 1, 2)
    observed = {tuple(o.attributes.items()): o.value for o in counter._observe(None)}  # type: ignore[arg-type]
    assert observed == {(("agent", "a"),): 2, (("agent", "b"),): 1, (("agent", "c"),): 1, (("overflow", "true"),): 2}

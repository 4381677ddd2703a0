"""Real receivers for the telemetry tests: the OpenTelemetry Collector (built by ``scripts/otelcol-bin.sh``, OTLP
in, OTLP JSON lines out to a file the test reads back) and Prometheus (Debian's package), both on loopback.

Without either binary the tests skip saying how to get it; with ``LATTICE_REQUIRE_TELEMETRY=1`` (CI) the skip is a
failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import free_ports

CACHE = Path(os.environ.get("LATTICE_CACHE", Path.home() / ".cache" / "station-lattice"))


def skip_or_fail(message: str) -> None:
    if os.environ.get("LATTICE_REQUIRE_TELEMETRY") == "1":
        pytest.fail(f"LATTICE_REQUIRE_TELEMETRY=1 but {message}", pytrace=False)
    pytest.skip(message)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, what: str, probe: Callable[[], object]) -> None:
    """Until ``probe`` stops raising OSError (the server answers), or fail with the server's log if it exits."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            probe()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not answer within 30 s")


def collector_binary() -> Path:
    found = sorted(CACHE.glob("otelcol/*/otelcol-lattice"))
    ready = [p for p in found if (p.parent / ".complete").exists()]
    if not ready:
        skip_or_fail("no OpenTelemetry Collector built: run `bash scripts/otelcol-bin.sh` (or `make telemetry-bin`)")
    return ready[-1]


def prometheus_binary() -> Path:
    found = shutil.which("prometheus")
    if found is None:
        skip_or_fail("no prometheus on PATH: run `make telemetry-bin` (scripts/telemetry-debs.sh)")
    return Path(str(found))


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    status: int = 0

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(v: dict[str, Any]) -> Any:
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in v:
            return v[kind]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    return None


def _attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items or ()}


class Collector:
    """``otelcol-lattice`` with an OTLP/HTTP receiver on a free loopback port and a file exporter."""

    def __init__(self, workdir: Path) -> None:
        self.binary = collector_binary()
        self.workdir = workdir
        [self.port] = free_ports(1)
        self.out = workdir / "traces.jsonl"
        self.config = workdir / "otelcol.yaml"
        self.log = workdir / "otelcol.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """What a process needs to send its traces here, exported within a tenth of a second."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_SAMPLER": "always_on", "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}

    def start(self) -> Collector:
        self.config.write_text(json.dumps({
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{self.port}"}}}},
            "exporters": {"file": {"path": str(self.out), "flush_interval": "100ms"}},
            "service": {"telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                        "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}}},
        }))
        log = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([str(self.binary), "--config", f"file:{self.config}"], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        # The OTLP/HTTP receiver answers an empty export once it listens.
        request = urllib.request.Request(f"{self.endpoint}/v1/traces", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        _wait_ready(self.proc, self.log, "the Collector", lambda: urllib.request.urlopen(request, timeout=1).read())
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def spans(self) -> list[Span]:
        """Every span the file exporter has written so far."""
        if not self.out.exists():
            return []
        out: list[Span] = []
        for line in self.out.read_text().splitlines():
            try:
                batch = json.loads(line)
            except ValueError:
                continue  # a line being written
            for resource_spans in batch.get("resourceSpans", ()):
                service = str(_attributes(resource_spans.get("resource", {}).get("attributes")).get("service.name"))
                for scope in resource_spans.get("scopeSpans", ()):
                    for s in scope.get("spans", ()):
                        out.append(Span(service=service, trace_id=s["traceId"], span_id=s["spanId"],
                                        parent_id=s.get("parentSpanId", ""), name=s["name"], kind=s.get("kind", 0),
                                        start_ns=int(s["startTimeUnixNano"]), end_ns=int(s["endTimeUnixNano"]),
                                        attributes=_attributes(s.get("attributes")),
                                        events=[{"name": e["name"], **_attributes(e.get("attributes"))}
                                                for e in s.get("events", ())],
                                        status=s.get("status", {}).get("code", 0)))
        return out

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans() if s.trace_id == trace_id]


def tree(spans: list[Span]) -> str:
    """A trace as an indented tree: service, span, duration (what a closing note shows)."""
    by_parent: dict[str, list[Span]] = {}
    ids = {s.span_id for s in spans}
    for s in sorted(spans, key=lambda s: s.start_ns):
        by_parent.setdefault(s.parent_id if s.parent_id in ids else "", []).append(s)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for s in by_parent.get(parent, ()):
            lines.append(f"{'  ' * depth}{s.service:<20} {s.name:<28} {s.duration_ms:8.2f} ms")
            walk(s.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


class Prometheus:
    """A Prometheus server on loopback scraping the given targets every 250 ms."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.binary = prometheus_binary()
        self.workdir = workdir
        [self.port] = free_ports(1)
        self.targets = targets
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "250ms", "scrape_timeout": "200ms", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "lattice", "static_configs": [{"targets": self.targets}]}],
        }))
        log = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([str(self.binary), f"--config.file={config}",
                                      f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        _wait_ready(self.proc, self.log, "Prometheus",
                    lambda: urllib.request.urlopen(f"{self.url}/-/ready", timeout=1).read())
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector PromQL answers with (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        _stop(self.proc)

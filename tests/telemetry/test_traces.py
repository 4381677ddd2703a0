"""One trace across processes, received by a real OpenTelemetry Collector: ``lattice submit`` (a CLI process), the
controller that places a delegated child, the station that runs both agents, and the model server, which records
the ``traceparent`` it was sent. Read back from the Collector's file exporter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from station_runtime.client import LatticeClient
from station_runtime.modelsim import ModelSim, Step, ToolCallStep
from station_runtime.telemetry import tracing
from tests.support.agents_llm import llm_agent, script
from tests.support.lattice import StationProcess
from tests.support.telemetry import Collector, Span, tree
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(120), pytest.mark.telemetry]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    running = Collector(tmp_path).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def sim() -> AsyncIterator[ModelSim]:
    async with ModelSim() as server:
        yield server


def cli(nats_url: str, org: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "station_runtime", "--nats", nats_url, "--org", org, *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False)


def one(spans: list[Span], name: str, **attributes: object) -> Span:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, f"expected one {name} {attributes}, got {len(found)} in:\n{tree(spans)}"
    return found[0]


async def test_one_trace_from_the_cli_to_the_model_call(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, collector: Collector, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MODEL_KEY", "sk-test-0123456789abcdef")
    script(sim, "planner-model", Step(tool_calls=(
        ToolCallStep("count_words", {"text": "one two three"}, id="call_count"),
        ToolCallStep("lattice_invoke", {"agent": "helper", "input": "help"}, id="call_help"))), "done")
    script(sim, "helper-model", "helped")
    await client.put_agent(llm_agent(sim, "openai", "planner-model", "planner", tools=[
        {"function": "station_runtime.examples.agents:count_words"},
        {"lattice": ["invoke"], "delegateTo": ["helper"]}]))
    await client.put_agent(llm_agent(sim, "openai", "helper-model", "helper"))
    env = collector.env()
    station = StationProcess(nats_url, org, "s-traced", tmp_path, env=env).start()
    controller = subprocess.Popen([sys.executable, "-m", "station_runtime", "--nats", nats_url, "--org", org,
                                   "controller", "run", "--interval", "0.2"], env={**os.environ, **env},
                                  stdout=open(tmp_path / "controller.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        await client.wait_for_stations(1, agent="helper", timeout_s=30)
        done = await asyncio.to_thread(cli, nats_url, org, "submit", "planner", "count these", "--id", "traced-1",
                                       "--wait", env=env)
        assert done.returncode == 0, done.stderr
        record = await client.get_work("traced-1")
        assert record is not None and record.children
        trace_id = tracing.trace_id(record.traceparent)
        assert trace_id is not None

        async def whole() -> list[Span] | None:
            spans = collector.trace(trace_id)
            names = [s.name for s in spans]
            # Every process exported its part: both placements (the CLI's, the controller's), both runs, and the
            # model calls (two of the planner, one of the helper).
            complete = (names.count("lattice.place") == 2 and names.count("lattice.run") == 2
                        and names.count("chat planner-model") == 2 and "chat helper-model" in names)
            return spans if complete else None

        spans = await eventually(whole, timeout_s=30, what="the whole trace at the Collector")
        sent = [r.headers.get("traceparent", "") for r in sim.requests]
        # Sync invoke carries its context too: the CLI's call, the station's serving of it, its model call.
        invoked = await asyncio.to_thread(cli, nats_url, org, "invoke", "helper", "quick one", env=env)
        assert invoked.returncode == 0, invoked.stderr

        async def invoke_trace() -> list[Span] | None:
            calls = [s for s in collector.spans() if s.name == "lattice.invoke" and s.service == "lattice-cli"]
            found = collector.trace(calls[0].trace_id) if calls else []
            return found if {"lattice.invoke", "chat helper-model"} <= {s.name for s in found} and len(
                [s for s in found if s.name == "lattice.invoke"]) == 2 else None

        invoke_spans = await eventually(invoke_trace, timeout_s=30, what="the invoke's trace")
    finally:
        controller.terminate()
        station.stop()
        await asyncio.to_thread(controller.wait, 10)
    shown = tree(spans)
    print(f"\ntrace {trace_id}:\n{shown}")  # the closing note's tree

    # The CLI's submission is the root; its record names it, so everything after joins it.
    submit = one(spans, "lattice.submit", **{"lattice.work.id": "traced-1"})
    assert submit.service == "lattice-cli" and submit.parent_id == ""
    assert record.traceparent is not None and record.traceparent.split("-")[2] == submit.span_id
    [place] = [s for s in spans if s.name == "lattice.place" and s.parent_id == submit.span_id]
    assert place.attributes["lattice.station.id"] == "s-traced"
    assert any(e["name"] in ("offer", "bid") for e in place.events)
    # The attempt's span starts with the station's claim (an event on it) under the placement that sent it.
    run = one(spans, "lattice.run", **{"lattice.work.id": "traced-1"})
    assert run.service == "lattice-station" and run.parent_id == place.span_id
    assert run.attributes["lattice.station.id"] == "s-traced" and run.attributes["lattice.work.phase"] == "Succeeded"
    assert [(e["name"], e["lattice.accepted"]) for e in run.events] == [("claim", True)]

    # The model calls follow the GenAI conventions, and the model server got each one's context.
    chats = [s for s in spans if s.name == "chat planner-model"]
    assert all(c.parent_id == run.span_id and c.attributes["gen_ai.operation.name"] == "chat" for c in chats)
    assert all(c.attributes["gen_ai.provider.name"] == "openai" for c in chats)
    assert all(c.attributes["gen_ai.usage.input_tokens"] > 0 for c in chats)
    assert sorted(c.attributes["gen_ai.response.finish_reasons"][0] for c in chats) == ["stop", "tool_calls"]
    assert all(f"00-{trace_id}-" in t for t in sent) and len(sent) == 3
    assert {t.split("-")[2] for t in sent} >= {c.span_id for c in chats}

    # The tool calls are spans of the run; the delegated child joins the same trace under its tool call.
    count = one(spans, "execute_tool count_words")
    invoke = one(spans, "execute_tool lattice_invoke")
    assert count.parent_id == run.span_id and invoke.parent_id == run.span_id
    child_id = invoke.attributes["lattice.work.child"]
    child_place = one(spans, "lattice.place", **{"lattice.work.id": child_id})
    assert child_place.service == "lattice-controller" and child_place.parent_id == invoke.span_id
    child_run = one(spans, "lattice.run", **{"lattice.work.id": child_id})
    child_chat = one(spans, "chat helper-model")
    assert child_chat.parent_id == child_run.span_id

    # The invoke: the CLI's client span, the station's server span under it, the model call under that.
    client_call = one(invoke_spans, "lattice.invoke", **{"lattice.agent": "helper"})
    [served] = [s for s in invoke_spans if s.name == "lattice.invoke" and s.service == "lattice-station"]
    assert served.parent_id == client_call.span_id
    assert one(invoke_spans, "chat helper-model").parent_id == served.span_id


async def test_no_otel_variables_no_trace_headers(client: LatticeClient, nats_url: str, org: str, sim: ModelSim,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tracing off (no OTEL_* variable): the model call carries no traceparent, the record still has a valid one.
    monkeypatch.setenv("TEST_MODEL_KEY", "sk-test-0123456789abcdef")
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    script(sim, "plain-model", "plain")
    await client.put_agent(llm_agent(sim, "openai", "plain-model", "plain"))
    station = StationProcess(nats_url, org, "s-plain", tmp_path).start()
    try:
        await client.wait_for_stations(1, agent="plain", timeout_s=30)
        done = await asyncio.to_thread(cli, nats_url, org, "submit", "plain", "x", "--id", "plain-1", "--wait",
                                       env={})
        assert done.returncode == 0, done.stderr
    finally:
        station.stop()
    [request] = sim.requests
    assert "traceparent" not in request.headers
    record = await client.get_work("plain-1")
    assert record is not None and tracing.trace_id(record.traceparent) is not None

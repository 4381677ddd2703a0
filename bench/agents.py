"""Agents: the lattice's own cost per model turn and per tool call, and one station carrying 500 streaming runs.

``run_overhead``: an agent loop in this process against modelsim with no pacing (a zero-latency model server) and a
no-op tool. The turn's overhead is the time of an agent run of one turn spent outside its provider's model call
(the conversation, limits, progress, the outcome), medians of interleaved samples; the provider's call itself is
compared with the same request made straight through the SDK, its stream read and nothing done with it. The tool call's
is the extra time of a run whose first turn makes eleven no-op calls over one that makes a single call, per call,
less what those ten calls add to the model's own traffic (the same two requests made straight through the SDK):
what the loop does per call (arguments parsed and checked, the tool box, the call, progress, the result message),
for a Python function tool and for an MCP tool over stdio.

``run_streams``: one station process (max concurrency 500) runs 500 agent runs at once, each streaming its answer
from a modelsim process at 50 tokens/s; a follower subscribed to the org's progress measures each message's lag
(received less sent, one clock); the station's RSS is sampled throughout; every item must succeed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import openai

from bench.common import Child, cpu_s, free_port, percentile, python, stop_all
from bench.context import RunContext, log
from station_runtime.api.models import Agent, WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.codec import decode
from station_runtime.contract.messages import AgentDefinition, WorkPhase, WorkProgress
from station_runtime.executors import Execution, load_executor
from station_runtime.modelsim import ModelSim, Script, Step, ToolCallStep
from station_runtime.natsio.connect import NatsSettings
from station_runtime.work.controller import WorkController

NOOP_TOOL = "bench.agents:noop"
MCP_SERVER = str(Path(__file__).resolve().parent.parent / "tests" / "support" / "mcp_tools_server.py")
STREAMS = 500
STREAM_TOKENS_PER_S = 50.0
#: Words in each streamed answer: ~3 s at 50 tokens/s.
STREAM_WORDS = 150


def noop() -> str:
    """Do nothing (the no-op tool)."""
    return "ok"


def _agent(sim: ModelSim, model: str, tools: list[dict[str, Any]]) -> AgentDefinition:
    agent = Agent.model_validate({"metadata": {"name": "bench"}, "spec": {
        "model": {"provider": "openai", "name": model, "baseUrl": sim.openai_base_url, "apiKeyEnv": "BENCH_NO_KEY",
                  "maxRetries": 0}, "tools": tools, "maxToolCalls": 1000, "maxTurns": 5}})
    return AgentDefinition(org="bench", name="bench", spec=agent.spec)


async def _timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def run_overhead(ctx: RunContext) -> None:
    n = {"full": 400, "quick": 80}.get(ctx.mode.name, 10)
    many = 11
    scripts = [Script("answer", (Step(text="done"),)),
               Script("one-tool", (Step(tool_calls=(ToolCallStep("noop"),)), Step(text="done"))),
               Script("many-tools", (Step(tool_calls=tuple(ToolCallStep("noop") for _ in range(many))),
                                     Step(text="done")))]
    async with ModelSim(scripts, record=False) as sim:
        sdk = openai.AsyncOpenAI(api_key="bench", base_url=sim.openai_base_url, max_retries=0)
        plain = await load_executor(_agent(sim, "answer", []))
        py_one = await load_executor(_agent(sim, "one-tool", [{"function": NOOP_TOOL}]))
        py_many = await load_executor(_agent(sim, "many-tools", [{"function": NOOP_TOOL}]))
        mcp = [{"mcp": {"command": sys.executable, "args": [MCP_SERVER]}, "allow": ["noop"]}]
        mcp_one = await load_executor(_agent(sim, "one-tool", mcp))
        mcp_many = await load_executor(_agent(sim, "many-tools", mcp))

        tools = [{"type": "function", "function": {"name": "noop", "description": "Do nothing (the no-op tool).",
                                                   "parameters": {"type": "object", "properties": {}}}}]

        async def request(model: str, messages: list[dict[str, Any]], with_tools: bool) -> None:
            """One streamed request through the SDK, its lines read and nothing else: the model's own cost."""
            extra: dict[str, Any] = {"tools": tools} if with_tools else {}
            opened = sdk.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
                model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **extra)
            async with opened as response:
                async for _ in response.iter_lines():
                    pass

        prompt = [{"role": "system", "content": ""}, {"role": "user", "content": "go"}]

        async def raw() -> None:
            await request("answer", prompt, False)

        def raw_tools(model: str, k: int) -> Any:
            calls = [{"id": f"c{i}", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
                     for i in range(k)]
            second: list[dict[str, Any]] = [*prompt, {"role": "assistant", "content": None, "tool_calls": calls},
                      *({"role": "tool", "tool_call_id": f"c{i}", "content": "ok"} for i in range(k))]

            async def both() -> None:
                await request(model, prompt, True)
                await request(model, second, True)
            return both

        def run(ex: Any) -> Any:
            return lambda: ex.run(Execution(input="go"))

        # The loop's own time around the model call: the one-turn agent's provider call timed from inside.
        in_model: list[float] = []
        turn_of = plain.provider.turn  # type: ignore[attr-defined]

        async def timed_turn(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await turn_of(*args, **kwargs)
            finally:
                in_model.append(time.perf_counter() - t0)

        plain.provider.turn = timed_turn  # type: ignore[attr-defined]

        async def loop_only() -> None:
            before = len(in_model)
            t0 = time.perf_counter()
            await plain.run(Execution(input="go"))
            outside.append(time.perf_counter() - t0 - sum(in_model[before:]))

        outside: list[float] = []

        try:
            cases = {"raw": raw, "turn": loop_only, "raw_one": raw_tools("one-tool", 1),
                     "raw_many": raw_tools("many-tools", many), "py_one": run(py_one), "py_many": run(py_many),
                     "mcp_one": run(mcp_one), "mcp_many": run(mcp_many)}
            for fn in cases.values():  # warm every path (connections, imports, the MCP server)
                await _timed(fn, 5)
            samples: dict[str, list[float]] = {k: [] for k in cases}
            rounds = 10
            for _ in range(rounds):  # interleaved, so that the machine's drift hits every case alike
                for name, fn in cases.items():
                    samples[name] += await _timed(fn, max(n // rounds, 1))
        finally:
            for ex in (plain, py_one, py_many, mcp_one, mcp_many):
                await ex.aclose()
            await sdk.close()
    med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    turn_us = statistics.median(outside) * 1e6
    provider_vs_sdk_us = statistics.median(in_model) * 1e6 - med["raw"]
    model_us = (med["raw_many"] - med["raw_one"]) / (many - 1)  # what ten more calls cost the model's traffic
    tool_us = (med["py_many"] - med["py_one"]) / (many - 1) - model_us
    mcp_us = (med["mcp_many"] - med["mcp_one"]) / (many - 1) - model_us
    ctx.results["agent_turn_overhead_us"] = round(turn_us, 1)
    ctx.results["agent_tool_call_overhead_us"] = round(tool_us, 1)
    ctx.record("agent_overhead", {
        "samples_per_case": len(samples["raw"]), "sdk_call_p50_us": round(med["raw"], 1),
        "agent_one_turn_p50_us": round(med["turn"], 1), "turn_overhead_us": round(turn_us, 1),
        "provider_call_vs_bare_sdk_us": round(provider_vs_sdk_us, 1),
        "python_tool_call_us": round(tool_us, 1), "mcp_tool_call_us": round(mcp_us, 1),
        "model_traffic_per_call_us": round(model_us, 1),
        "one_tool_run_p50_us": round(med["py_one"], 1), "eleven_tool_run_p50_us": round(med["py_many"], 1)})


async def run_streams(ctx: RunContext) -> None:
    count = {"full": STREAMS, "quick": STREAMS}.get(ctx.mode.name, 20)
    if ctx.mode.name == "smoke" or os.environ.get("BENCH_STREAMS"):
        count = int(os.environ.get("BENCH_STREAMS", "20"))
    org = f"benchagents{uuid.uuid4().hex[:6]}"
    words = " ".join(f"w{i}" for i in range(STREAM_WORDS))
    scripts = ctx.workdir / "stream-scripts.json"
    scripts.write_text(json.dumps([{"name": "streamer", "steps": [{"text": words}]}]))
    port = free_port()
    children: list[Child] = []
    sim = Child([python(), "-m", "station_runtime.modelsim", "--port", str(port), "--tokens-per-s",
                 str(STREAM_TOKENS_PER_S), "--scripts", str(scripts)], ctx.workdir / "modelsim.log")
    children.append(sim)
    client = LatticeClient(NatsSettings(url=ctx.nats_url), org, create_state=True)
    lags: list[float] = []
    peak_rss = 0.0
    # The follower is this process, which in a --full run holds what the scenarios before left (tens of thousands
    # of records): its own collector's full passes then paused it for hundreds of ms, measured as progress lag
    # (p99 378 and 453 ms in --full runs, 45 ms for the same scenario run alone). What came before is frozen out of
    # the collector's view, so that the lag is the lattice's.
    gc.collect()
    gc.freeze()
    try:
        await client.connect()
        await client.state()
        agent = Agent.model_validate({"metadata": {"name": "streamer"}, "spec": {
            "model": {"provider": "openai", "name": "streamer", "baseUrl": f"http://127.0.0.1:{port}/v1",
                      "apiKeyEnv": "BENCH_NO_KEY", "maxRetries": 2, "timeoutSeconds": 120}}})
        await client.put_agent(agent)
        station = Child([python(), "-m", "station_runtime", "--nats", ctx.nats_url, "--org", org, "--log-level",
                         "warning", "station", "run", "--station-id", "s0", "--max-concurrency", str(count)],
                        ctx.workdir / f"{org}-s0.log")
        children.append(station)
        await client.wait_for_stations(1, agent="streamer", timeout_s=60)
        idle_rss = station.rss_mb()

        async def on_progress(msg: Any) -> None:
            try:
                update = decode(msg.data, WorkProgress)
            except Exception:  # a malformed message is not ours to measure
                return
            lags.append(time.time() - update.sent_at.timestamp())

        sub = await client.connection().subscribe(subjects.work_progress_all(org), cb=on_progress)
        async with WorkController(await client.org_work(), interval_s=0.5):
            t0 = time.monotonic()
            ids = [(await client.submit(WorkItemSpec(agent="streamer", input="go"), watch=True)).work_id
                   for _ in range(count)]
            waits = asyncio.gather(*(client.wait_work(i, timeout_s=300) for i in ids), return_exceptions=True)
            while not waits.done():
                peak_rss = max(peak_rss, station.rss_mb())
                await asyncio.wait({waits}, timeout=0.25)
            finals = waits.result()
            elapsed = time.monotonic() - t0
            cpu = {"station_cpu_s": round(cpu_s(station.pid), 1), "modelsim_cpu_s": round(cpu_s(sim.pid), 1)}
        await sub.unsubscribe()
    finally:
        gc.unfreeze()
        await client.close()
        await asyncio.to_thread(stop_all, children)
    ok = sum(1 for f in finals if not isinstance(f, BaseException) and f.phase == WorkPhase.SUCCEEDED)
    lost = count - ok
    # bench.common.percentile takes seconds and gives microseconds.
    lag_ms = {q: percentile(lags, q) / 1000 for q in (50, 99)} if lags else {}
    ctx.results["agent_streams_500_rss_mb"] = round(peak_rss, 1)
    ctx.results["agent_streams_500_progress_lag_p99_ms"] = round(lag_ms[99], 1) if lag_ms else None
    ctx.results["agent_streams_500_lost"] = lost
    ctx.record("agent_streams", {
        "runs": count, "succeeded": ok, "lost": lost, "seconds": round(elapsed, 1),
        "tokens_per_s_each": STREAM_TOKENS_PER_S, "words_each": STREAM_WORDS,
        "station_idle_rss_mb": round(idle_rss, 1), **cpu, "station_peak_rss_mb": round(peak_rss, 1),
        "progress_messages": len(lags),
        "progress_lag_p50_ms": round(lag_ms[50], 2) if lag_ms else None,
        "progress_lag_p99_ms": round(lag_ms[99], 2) if lag_ms else None})
    if lost:
        log.warning("agent streams: %d of %d runs did not succeed", lost, count)

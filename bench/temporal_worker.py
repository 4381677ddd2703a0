"""The Temporal side of the durable-run benchmark: an agent loop as a Temporal workflow whose model calls and tool
calls are activities, and ``python -m bench.temporal_worker ADDRESS QUEUE MODEL_URL`` to run one worker process.

The model call is the lattice's own OpenAI provider (the same SDK request to the same model server, the same
stream parsing), so what differs between the two sides is only what carries the run: Temporal's event history
and task queues against the lattice's journal and auction. The tool is a no-op, as on the lattice side.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

#: The model (a modelsim script) and the one tool, as the lattice's agent declares them.
MODEL = "durable-four"
TOOL = "noop"
MAX_TURNS = 10


# The bench extra installs temporalio; without it (the test extra only) its decorators are untyped to mypy.
@activity.defn  # type: ignore[untyped-decorator, unused-ignore]
async def model_call(model_url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One model turn through the lattice's OpenAI provider; the answer as plain data for the history."""
    from station_runtime.contract.specs import ModelSpec
    from station_runtime.executors.conversation import Message, ToolCall, ToolDefinition
    from station_runtime.executors.providers.base import TurnRequest
    from station_runtime.executors.providers.openai_chat import OpenAIChat

    provider = _providers.get(model_url)
    if provider is None:
        provider = _providers[model_url] = OpenAIChat(ModelSpec(provider="openai", name=MODEL, base_url=model_url,
                                                                api_key_env="BENCH_NO_KEY", max_retries=0))
    conversation = [Message(m["role"], text=m.get("text", ""), tool_call_id=m.get("tool_call_id", ""),
                            tool_name=m.get("tool_name", ""),
                            tool_calls=tuple(ToolCall(c["id"], c["name"], c["arguments"])
                                             for c in m.get("tool_calls", [])))
                    for m in messages]
    tools = [ToolDefinition(TOOL, "Do nothing.", {"type": "object", "properties": {}})]

    async def on_text(_: str) -> None:
        return None

    turn = await provider.turn(TurnRequest(system="Be brief.", messages=conversation, tools=tools), on_text)
    return {"text": turn.text, "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments}
                                               for c in turn.tool_calls]}


_providers: dict[str, Any] = {}


@activity.defn  # type: ignore[untyped-decorator, unused-ignore]
async def tool_call(name: str, arguments: dict[str, Any] | str) -> str:
    """The no-op tool."""
    return "ok"


@workflow.defn
class AgentRun:
    """The agent loop: model, then its tool calls, until it answers; each step an activity in the history."""

    @workflow.run  # type: ignore[untyped-decorator, unused-ignore]
    async def run(self, model_url: str, prompt: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "text": prompt}]
        for _ in range(MAX_TURNS):
            answer = await workflow.execute_activity(model_call, args=[model_url, messages],
                                                     start_to_close_timeout=timedelta(seconds=30))
            messages.append({"role": "assistant", "text": answer["text"], "tool_calls": answer["tool_calls"]})
            if not answer["tool_calls"]:
                return str(answer["text"])
            for call in answer["tool_calls"]:
                result = await workflow.execute_activity(tool_call, args=[call["name"], call["arguments"]],
                                                         start_to_close_timeout=timedelta(seconds=30))
                messages.append({"role": "tool", "text": result, "tool_call_id": call["id"],
                                 "tool_name": call["name"]})
        raise RuntimeError("no answer within MAX_TURNS")


async def serve(address: str, queue: str, model_url: str) -> None:
    del model_url  # the workflow carries it (an argument of each run)
    client = await Client.connect(address)
    worker = Worker(client, task_queue=queue, workflows=[AgentRun], activities=[model_call, tool_call])
    print("temporal worker ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(serve(*sys.argv[1:4]))

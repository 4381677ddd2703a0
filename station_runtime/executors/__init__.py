"""Agent executors behind one interface (:class:`~.base.Executor`).

The agent loop, its providers' SDKs and the MCP SDK are imported when the first agent that needs them is built, not
with this package: a station that hosts no model-backed agent stays small and starts fast (the SDKs cost ~90 MB and
seconds of imports).
"""

from __future__ import annotations

import asyncio

from ..contract.messages import AgentDefinition, ErrorCode
from ..contract.specs import LLM_PROVIDERS, McpServerSpec
from .base import AgentFailure, Execution, Executor, Outcome, Progress, Suspended
from .echo import EchoExecutor
from .python import PythonExecutor

__all__ = ["AgentFailure", "Execution", "Executor", "Outcome", "Progress", "Suspended", "build_executor",
           "load_executor"]

#: Loading an agent (connecting its tool servers, listing their tools) takes at most this long beyond the servers'
#: own connect timeouts.
LOAD_MARGIN_S = 5.0


def build_executor(definition: AgentDefinition) -> Executor:
    """The executor for an agent's ``model.provider``, not yet started; raises :class:`AgentFailure` if it cannot be
    built."""
    provider = definition.spec.model.provider
    if provider == "echo":
        return EchoExecutor(definition)
    if provider == "python":
        return PythonExecutor(definition)
    from .agent import AgentExecutor  # the SDKs, on first use

    return AgentExecutor(definition)


async def load_executor(definition: AgentDefinition) -> Executor:
    """Build the executor and do what it needs before its first run (tool servers connected, tools discovered)."""
    if definition.spec.model.provider in LLM_PROVIDERS:
        # Seconds of imports the first time: in a thread, so that the station's loop (heartbeats, bids) goes on.
        await asyncio.to_thread(_import_sdks, definition)
    executor = build_executor(definition)
    start = getattr(executor, "start", None)  # an agent with tool servers to connect
    if start is not None:
        bound = max((s.connect_timeout_seconds for s in _servers(definition)), default=0.0) + LOAD_MARGIN_S
        try:
            async with asyncio.timeout(bound):
                await start()
        except TimeoutError:
            await executor.aclose()
            raise AgentFailure(f"loading agent {definition.name!r} took longer than {bound:g}s (its tool servers)",
                               ErrorCode.MODEL_UNAVAILABLE) from None
    return executor


def _import_sdks(definition: AgentDefinition) -> None:
    import importlib

    provider = "anthropic_messages" if definition.spec.model.provider == "anthropic" else "openai_chat"
    importlib.import_module(f"{__name__}.agent")
    importlib.import_module(f"{__name__}.providers.{provider}")
    if any(ref.mcp is not None or ref.server is not None for ref in definition.spec.tools):
        importlib.import_module(f"{__name__}.tools.mcp")


def _servers(definition: AgentDefinition) -> list[McpServerSpec]:
    found: list[McpServerSpec] = []
    for ref in definition.spec.tools:
        if ref.mcp is not None:
            found.append(ref.mcp)
        elif ref.server is not None and ref.server in definition.tool_servers:
            found.append(definition.tool_servers[ref.server])
    return found

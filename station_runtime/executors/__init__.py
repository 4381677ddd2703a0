"""Agent executors behind one interface (:class:`~.base.Executor`)."""

from __future__ import annotations

import asyncio

from ..contract.messages import AgentDefinition, ErrorCode
from ..contract.specs import McpServerSpec
from .agent import AgentExecutor
from .base import AgentFailure, Execution, Executor, Outcome, Progress
from .echo import EchoExecutor
from .python import PythonExecutor

__all__ = ["AgentExecutor", "AgentFailure", "Execution", "Executor", "Outcome", "Progress", "build_executor",
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
    return AgentExecutor(definition)


async def load_executor(definition: AgentDefinition) -> Executor:
    """Build the executor and do what it needs before its first run (tool servers connected, tools discovered)."""
    executor = build_executor(definition)
    if isinstance(executor, AgentExecutor):
        bound = max((s.connect_timeout_seconds for s in _servers(definition)), default=0.0) + LOAD_MARGIN_S
        try:
            async with asyncio.timeout(bound):
                await executor.start()
        except TimeoutError:
            await executor.aclose()
            raise AgentFailure(f"loading agent {definition.name!r} took longer than {bound:g}s (its tool servers)",
                               ErrorCode.MODEL_UNAVAILABLE) from None
    return executor


def _servers(definition: AgentDefinition) -> list[McpServerSpec]:
    found: list[McpServerSpec] = []
    for ref in definition.spec.tools:
        if ref.mcp is not None:
            found.append(ref.mcp)
        elif ref.server is not None and ref.server in definition.tool_servers:
            found.append(definition.tool_servers[ref.server])
    return found

"""``openai`` and ``anthropic`` agents: a provider, the agent's tools, and the loop.

Loading an agent connects its MCP servers and discovers their tools (:meth:`AgentExecutor.start`); a server that
cannot be reached makes the load fail with the reason, so the agent is reported not ready instead of failing its
first run. The tools found are what stations report in their registry record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING

from ..contract.messages import AgentDefinition, ErrorCode
from ..contract.specs import ToolRef
from .base import AgentFailure, Execution, Outcome
from .limits import run_limits
from .loop import AgentLoop
from .prompting import Prompting
from .providers.base import Provider
from .tools.base import Tool, ToolBox
from .tools.functions import FunctionTool
from .tools.human import AskUser
from .tools.lattice import lattice_tools

if TYPE_CHECKING:
    from .tools.mcp import McpServer

log = logging.getLogger(__name__)


def provider_for(definition: AgentDefinition) -> Provider:
    """The provider, its SDK imported on first use (a station pays only for the SDKs its agents use)."""
    model = definition.spec.model
    if model.provider == "anthropic":
        from .providers.anthropic_messages import AnthropicMessages

        return AnthropicMessages(model)
    from .providers.openai_chat import OpenAIChat

    return OpenAIChat(model)


class AgentExecutor:
    def __init__(self, definition: AgentDefinition) -> None:
        self.definition = definition
        spec = definition.spec
        self.provider = provider_for(definition)
        self.prompting = Prompting(spec.system_prompt, spec.prompt_template, spec.input_schema)
        self.tools = ToolBox(default_timeout_s=spec.tool_timeout_seconds)
        self.servers: list[tuple[McpServer, ToolRef]] = []
        local: list[tuple[Tool, ToolRef]] = []
        for ref in spec.tools:
            if ref.function is not None:
                local.append((FunctionTool(ref.function, ref.name), ref))
            elif ref.lattice is not None:
                local.extend((tool, ref) for tool in lattice_tools(ref.lattice, ref.delegate_to,
                                                                    spec.max_delegation_depth))
            elif ref.ask_user:
                local.append((AskUser(), ref))
            elif ref.ask_user is not None:  # askUser: false
                continue
            else:
                from .tools.mcp import McpServer  # the MCP SDK, on first use

                name = ref.server or "mcp"
                server_spec = ref.mcp if ref.mcp is not None else definition.tool_servers.get(name)
                if server_spec is None:
                    raise AgentFailure(f"ToolServer {name!r} is not defined in org {definition.org!r}: apply it "
                                       "(kind: ToolServer) or fix the agent's tools", ErrorCode.BAD_REQUEST)
                self.servers.append((McpServer(name, server_spec, default_timeout_s=spec.tool_timeout_seconds),
                                     ref))
        try:
            for tool, ref in local:
                # The question itself needs no approval: answering it is the person's decision.
                approval = (ref.require_approval or spec.require_approval) and not ref.ask_user
                self.tools.add(tool, ref.unknown_outcome, approval)
        except ValueError as exc:
            raise AgentFailure(str(exc), ErrorCode.BAD_REQUEST) from exc

    async def start(self) -> None:
        """Connect every MCP server and add the tools each offers (its allow-list applied)."""
        results = await asyncio.gather(*(server.start() for server, _ in self.servers), return_exceptions=True)
        problems = [f"{server.name}: {result}" for (server, _), result in zip(self.servers, results, strict=True)
                    if isinstance(result, BaseException)]
        if problems:
            await self.aclose()
            raise AgentFailure("tool server unavailable: " + "; ".join(problems), ErrorCode.MODEL_UNAVAILABLE)
        try:
            for server, ref in self.servers:
                offered = {tool.definition.name: tool for tool in server.tools}
                missing = [n for n in ref.allow if n not in offered]
                if missing:
                    raise AgentFailure(f"tool server {server.name!r} has no tool {', '.join(map(repr, missing))} "
                                       f"(it has: {', '.join(offered) or 'none'})", ErrorCode.BAD_REQUEST)
                self.tools.extend((t for n, t in offered.items() if not ref.allow or n in ref.allow),
                                  ref.unknown_outcome, ref.require_approval or self.definition.spec.require_approval)
        except ValueError as exc:
            await self.aclose()
            raise AgentFailure(str(exc), ErrorCode.BAD_REQUEST) from exc

    def tool_names(self) -> list[str]:
        return self.tools.listing()

    async def run(self, execution: Execution) -> Outcome:
        spec = self.definition.spec
        system = spec.system_prompt
        if self.prompting.active:
            system, text = self.prompting.render(execution.input)
            execution = dataclasses.replace(execution, input=text)
        loop = AgentLoop(provider=self.provider, tools=self.tools, system=system,
                         limits=run_limits(spec, execution.work, execution.inherited_budget), price=spec.model.price,
                         model_max_tokens=spec.model.max_tokens, output_schema=spec.output_schema,
                         agent=self.definition.name, provider_name=spec.model.provider, model=spec.model.name or "",
                         approval_timeout_s=spec.approval_timeout_seconds)
        return await loop.run(execution)

    async def aclose(self) -> None:
        for server, _ in self.servers:
            with contextlib.suppress(Exception):  # closing must not fail a reload; each server logs its own
                await server.aclose()
        await self.provider.aclose()

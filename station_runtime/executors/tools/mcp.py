"""MCP tool servers: a connection per (agent, server) that starts the server or reaches it, lists its tools, and
runs the model's calls on it.

The official SDK's transports and session are anyio context managers that must be entered and left by one task,
so each connection is owned by a task of its own (:meth:`McpServer._own`): it opens the transport and the
session, says when it is ready (or why it could not be), and holds them until it is told to close. Calls are made
from the runs' tasks on the open session.

A server that goes away (its process exits, its URL stops answering) fails the calls in flight with an error the
model sees; the next call reconnects first. A call that failed is never sent again by us: the server may have
acted on it, and a tool's side effect must happen at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, cast

import mcp.types as mt
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from ...contract.specs import McpServerSpec, ValueSource
from ...tasks import stop_task
from ...telemetry import tracing
from ..conversation import ToolDefinition
from .base import ToolContext, ToolResult, as_text, truncate

log = logging.getLogger(__name__)

#: A server may list at most this many tools (pages followed); more is a misconfigured server, not a toolbox.
MAX_TOOLS = 512
#: At most this many pages of a tool listing.
MAX_PAGES = 32
#: How long a closing connection may take before its task is cancelled.
CLOSE_TIMEOUT_S = 5.0
#: Where a tool call's idempotency key travels in the request's ``_meta`` (a prefixed key, as MCP asks of
#: implementation-defined metadata).
IDEMPOTENCY_META = "lattice.station.dev/idempotency-key"
#: What a description the model reads may hold.
MAX_DESCRIPTION = 2048


class McpUnavailable(Exception):
    """The server could not be started or reached, or did not answer its listing; the message says why."""


def resolve_value(value: str | ValueSource, what: str) -> str:
    """An env or header value: inline, from the station's environment, or from a file (``${VAR}`` expanded: on
    Kubernetes the operator mounts Secrets under a directory it names). The value is never logged."""
    if isinstance(value, str):
        return value
    if value.value is not None:
        return value.value
    if value.from_env is not None:
        found = os.environ.get(value.from_env)
        if found is None:
            raise McpUnavailable(f"{what}: environment variable {value.from_env} is not set on this station")
        return found
    if value.from_file is not None:
        path = os.path.expandvars(value.from_file)
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise McpUnavailable(f"{what}: cannot read {path}: {exc.strerror}") from None
    raise McpUnavailable(f"{what}: secretRef is resolved by the operator on Kubernetes; embedded, use fromEnv or "
                         "fromFile")


def _text_of(block: Any) -> str:
    """One content block as the model reads it; what it cannot read (images, audio) is named, not dropped."""
    if isinstance(block, mt.TextContent):
        return block.text
    if isinstance(block, mt.ImageContent | mt.AudioContent):
        kind = "image" if isinstance(block, mt.ImageContent) else "audio"
        return f"[{kind} {block.mime_type}, {len(block.data) * 3 // 4} bytes, not shown]"
    if isinstance(block, mt.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mt.TextResourceContents):
            return resource.text
        return f"[resource {resource.uri}, {resource.mime_type or 'binary'}, not shown]"
    if isinstance(block, mt.ResourceLink):
        return f"[resource link {block.uri}]"
    return f"[{getattr(block, 'type', 'unknown')} content, not shown]"


def result_text(result: mt.CallToolResult) -> ToolResult:
    """A tool result for the model: its text content, or its structured content when it has no text."""
    texts = [_text_of(block) for block in result.content]
    if not texts and result.structured_content is not None:
        texts = [as_text(result.structured_content)]
    return ToolResult(truncate("\n".join(texts)), bool(result.is_error))


class McpTool:
    """One tool of a server, as the tool box runs it."""

    def __init__(self, server: McpServer, tool: mt.Tool) -> None:
        self.server = server
        self.source = server.name
        self.timeout_s = server.spec.tool_timeout_seconds
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else {"type": "object"}
        description = (tool.description or tool.title or tool.name)[:MAX_DESCRIPTION]
        self.definition = ToolDefinition(name=tool.name, description=description, parameters=dict(schema))

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return await self.server.call(self.definition.name, arguments, self.timeout_s or self.server.default_timeout_s,
                                      ctx.idempotency_key)


class McpServer:
    """A connection to one MCP server for one agent; :meth:`start` before use, :meth:`aclose` after."""

    def __init__(self, name: str, spec: McpServerSpec, default_timeout_s: float = 60.0) -> None:
        self.name = name
        self.spec = spec
        self.default_timeout_s = default_timeout_s
        self.tools: list[McpTool] = []
        self._session: ClientSession | None = None
        self._owner: asyncio.Task[None] | None = None
        self._close = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._session is not None and self._owner is not None and not self._owner.done()

    async def start(self) -> None:
        """Connect and list the tools; raises :class:`McpUnavailable` with the reason when it cannot."""
        async with self._lock:
            await self._connect()

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float, key: str = "") -> ToolResult:
        if not self.connected:
            async with self._lock:
                if not self.connected:
                    if self._closed:
                        return ToolResult(f"error: tool server {self.name} is closed", True)
                    try:
                        await self._connect()
                    except McpUnavailable as exc:
                        return ToolResult(f"error: tool server {self.name} is unavailable: {exc}", True)
        session = self._session
        assert session is not None
        try:
            # The tool call's span travels in the request's _meta (W3C trace context, as MCP's tracing proposal
            # carries it): the session is shared by every call, so per-call HTTP headers cannot carry it. So does
            # the call's idempotency key, the same in every attempt of the run.
            meta = tracing.headers({IDEMPOTENCY_META: key} if key else None)
            result = await session.call_tool(name, arguments, read_timeout_seconds=timeout_s,
                                             meta=cast(Any, meta) if meta else None)
        except MCPError as exc:
            if exc.code == mt.REQUEST_TIMEOUT:
                return ToolResult(f"error: {name} did not answer within {timeout_s:g}s", True)
            if exc.code != mt.CONNECTION_CLOSED:  # the server answered with a protocol error: the model hears it
                return ToolResult(f"error: {name} failed on {self.name}: {truncate(exc.message, 2000)}", True)
            return self._went_away(name, exc)
        except (TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:
            return self._went_away(name, exc)
        if not isinstance(result, mt.CallToolResult):
            return ToolResult(f"error: {name} on {self.name} asked for input, which agents cannot give", True)
        return result_text(result)

    def _went_away(self, name: str, exc: Exception) -> ToolResult:
        """The connection broke during a call: the next call reconnects, and this one is not sent again."""
        log.warning("tool server %s: call %s failed (%r); reconnecting on the next call", self.name, name, exc)
        self._drop()
        return ToolResult(f"error: tool server {self.name} went away during {name}; the call may or may not have "
                          "taken effect", True)

    async def aclose(self) -> None:
        self._closed = True
        await self._stop()

    # -- the connection's owner task -------------------------------------------------------------------------------

    async def _connect(self) -> None:
        await self._stop()
        self._close = asyncio.Event()
        ready: asyncio.Future[list[mt.Tool]] = asyncio.get_running_loop().create_future()
        # Retrieved even when nobody awaits it any more (a load cancelled because a newer definition came).
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._owner = asyncio.create_task(self._own(ready), name=f"mcp-{self.name}")
        try:
            async with asyncio.timeout(self.spec.connect_timeout_seconds):
                listed = await asyncio.shield(ready)
        except TimeoutError:
            await self._stop()
            raise McpUnavailable(f"no answer within {self.spec.connect_timeout_seconds:g}s "
                                 f"({self._where()})") from None
        except McpUnavailable:
            await self._stop()
            raise
        self.tools = [McpTool(self, tool) for tool in listed]
        log.info("tool server %s: connected (%s), %d tool(s)", self.name, self._where(), len(self.tools))

    async def _own(self, ready: asyncio.Future[list[mt.Tool]]) -> None:
        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                listed = await self._list(session)
                self._session = session
                if not ready.done():
                    ready.set_result(listed)
                await self._close.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.set_exception(McpUnavailable("connection cancelled"))
            raise
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(McpUnavailable(_reason(exc)))
            else:
                log.warning("tool server %s: connection lost: %s", self.name, _reason(exc))
        finally:
            self._session = None

    async def _list(self, session: ClientSession) -> list[mt.Tool]:
        tools: list[mt.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await session.list_tools(params=mt.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools.extend(page.tools)
            if len(tools) > MAX_TOOLS:
                raise McpUnavailable(f"it lists more than {MAX_TOOLS} tools; allow the ones this agent needs "
                                     "on a server that offers fewer")
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        spec = self.spec
        if spec.transport == "http":
            assert spec.url is not None
            headers = {k: resolve_value(v, f"header {k}") for k, v in spec.headers.items()}
            client = create_mcp_http_client(headers=headers)
            return _http(spec.url, client)
        assert spec.command is not None
        env = {k: resolve_value(v, f"env {k}") for k, v in spec.env.items()}
        params = StdioServerParameters(command=spec.command, args=list(spec.args), env=env or None,
                                       cwd=os.path.expandvars(spec.cwd) if spec.cwd else None)
        # The server's stderr is the station's (in its log); its environment is the SDK's safe default (PATH, HOME,
        # ...) plus what the spec gives: the station's own secrets are not inherited.
        return stdio_client(params, errlog=sys.stderr)

    def _where(self) -> str:
        return (self.spec.url or "") if self.spec.transport == "http" else f"command {self.spec.command}"

    def _drop(self) -> None:
        """Forget a broken connection (its task is told to leave); the next call connects anew."""
        self._session = None
        self._close.set()

    async def _stop(self) -> None:
        owner, self._owner = self._owner, None
        self._session = None
        self._close.set()
        if owner is None or owner.done():
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(owner)
        except TimeoutError:
            await stop_task(owner, CLOSE_TIMEOUT_S)
        except BaseException:
            pass


@contextlib.asynccontextmanager
async def _http(url: str, client: Any) -> Any:
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


def _reason(exc: BaseException) -> str:
    """The first real cause inside (possibly nested) exception groups, said briefly."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, McpUnavailable):
        return str(exc)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        text = f"command not found: {exc.filename or text}"
    return truncate(f"{type(exc).__name__}: {text}", 1000)


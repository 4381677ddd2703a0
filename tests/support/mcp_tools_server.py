"""A real MCP server (the official ``mcp`` SDK's ``MCPServer``) with a few tools, for the MCP tool-support tests.

Tools: ``add`` (structured output ``{"result": a + b}`` plus text), ``echo``, ``slow`` (sleeps), ``fail`` (always an
``isError`` result carrying the message), ``huge`` (returns ``size`` characters), ``counter`` (a process-wide count of
how many times it really ran), ``die`` (exits
the process mid-call) and ``noop`` (for latency measurements). ``counter`` and ``die`` append a line to the file named
by ``MCP_TOOLS_LEDGER``, when set, so a test sees every call that ran across server processes.

Run it
  * over stdio: ``python -m tests.support.mcp_tools_server`` or ``python /abs/path/tests/support/mcp_tools_server.py``;
  * over streamable HTTP on 127.0.0.1: ``python -m tests.support.mcp_tools_server --http --port N
    [--require-header NAME=VALUE]``. The URL is printed on one stdout line, ``MCP_URL http://127.0.0.1:PORT/mcp``, once
    the server accepts connections (use ``--port 0`` to let the kernel choose the port, then read that line). With
    ``--require-header``, a request whose header ``NAME`` is not exactly ``VALUE`` is refused with 401.

Or in-process (the recommended way for HTTP tests: no port race, no process to reap, and a test can stop the server to
simulate it going away)::

    async with serve_http(port=0, require_header=("Authorization", "Bearer t0ken")) as url:
        async with Client(url, ...) as client: ...

This file imports nothing from the repository, so it also runs as a plain script.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp, Receive, Scope, Send

SERVER_NAME = "station-lattice-test-tools"
SERVER_VERSION = "1.0.0"
HOST = "127.0.0.1"
PATH = "/mcp"
URL_LINE_PREFIX = "MCP_URL "
#: Where a lattice tool call's idempotency key travels in ``_meta`` (as station_runtime.executors.tools.mcp sends it).
IDEMPOTENCY_META = "lattice.station.dev/idempotency-key"

_count = 0


def counter_value() -> int:
    """How many times ``counter`` ran in this process (meaningful for an in-process server)."""
    return _count


def _ledger(name: str) -> None:
    path = os.environ.get("MCP_TOOLS_LEDGER")
    if path:
        with open(path, "a") as f:
            f.write(name + "\n")


def build_server() -> MCPServer:
    """A fresh server with every tool registered.

    ``MCPServer()`` calls ``logging.basicConfig`` (a RichHandler on stderr) when the root logger has no handler yet;
    this undoes that so that importing or building the server in a test process leaves its logging as it was.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        server: MCPServer = MCPServer(
            SERVER_NAME,
            version=SERVER_VERSION,
            instructions="Tools for Station Lattice's MCP tests.",
            log_level="WARNING",
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

    pure = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

    @server.tool(title="Add", annotations=pure)
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool(annotations=pure)
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep for the given number of seconds, then return "slept"."""
        await anyio.sleep(seconds)
        return "slept"

    @server.tool()
    def fail(message: str) -> str:
        """Always fail: the result has isError true and carries the message."""
        raise ToolError(message)

    @server.tool(annotations=pure)
    def huge(size: int) -> str:
        """Return a string of `size` characters."""
        return "x" * size

    @server.tool()
    def counter() -> int:
        """Increment the process-wide counter and return its new value."""
        global _count
        _count += 1
        _ledger("counter")
        return _count

    @server.tool()
    def die() -> str:
        """Exit the server's process at once, mid-call (over stdio: the server going away)."""
        _ledger("die")
        os._exit(3)

    @server.tool()
    def keyed(ctx: Context) -> str:  # type: ignore[type-arg]
        """Say the idempotency key the call carried in its _meta ("none" without one)."""
        meta: Any = ctx.request_context.meta
        found = meta.get(IDEMPOTENCY_META) if isinstance(meta, dict) else (
            getattr(meta, "model_extra", None) or {}).get(IDEMPOTENCY_META)
        return str(found or "none")

    @server.tool(annotations=pure)
    def noop() -> str:
        """Do nothing; return "ok"."""
        return "ok"

    return server


class RequireHeader:
    """ASGI middleware: an HTTP request whose header ``name`` is not ``value`` gets 401 and never reaches the app."""

    def __init__(self, app: ASGIApp, name: str, value: str) -> None:
        self.app = app
        self.name = name.lower().encode("latin-1")
        self.value = value.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            sent = [v for k, v in scope["headers"] if k == self.name]
            if sent != [self.value]:
                body = b'{"error": "unauthorized"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class _Uvicorn(uvicorn.Server):
    """Tells when it accepts connections; can leave signals to the host (``serve`` replaces SIGINT/SIGTERM handlers)."""

    capture: bool = True
    accepting: anyio.Event

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.accepting.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self.capture:
            with super().capture_signals():
                yield
        else:
            yield


@contextlib.asynccontextmanager
async def serve_http(
    port: int = 0,
    require_header: tuple[str, str] | None = None,
    *,
    json_response: bool = False,
    stateless: bool = False,
    capture_signals: bool = False,
    server: MCPServer | None = None,
) -> AsyncIterator[str]:
    """Serve the tools over streamable HTTP on 127.0.0.1 in this process; yields the endpoint URL once it accepts.

    ``server`` replaces the default ``build_server()`` (e.g. one with extra tools added). Leaving the block stops the
    server (open connections are cut after at most a second), which is how a test simulates the server going away.
    """
    app: ASGIApp = (server or build_server()).streamable_http_app(
        streamable_http_path=PATH, json_response=json_response, stateless_http=stateless, host=HOST
    )
    if require_header is not None:
        app = RequireHeader(app, *require_header)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    sock.listen(128)
    chosen = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    web = _Uvicorn(config)
    web.capture = capture_signals
    web.accepting = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(web.serve, [sock])
            await web.accepting.wait()
            try:
                yield f"http://{HOST}:{chosen}{PATH}"
            finally:
                web.should_exit = True
    finally:
        sock.close()


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


async def _serve_http_forever(port: int, require_header: tuple[str, str] | None) -> None:
    async with serve_http(port, require_header, capture_signals=True) as url:
        print(f"{URL_LINE_PREFIX}{url}", flush=True)
        await anyio.sleep_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP on 127.0.0.1 instead of stdio")
    parser.add_argument("--port", type=int, default=0, help="HTTP port; 0 lets the kernel choose (default)")
    parser.add_argument(
        "--require-header", type=_parse_header, metavar="NAME=VALUE", help="refuse (401) requests without this header"
    )
    args = parser.parse_args(argv)
    if not args.http:
        if args.require_header is not None:
            parser.error("--require-header needs --http")
        build_server().run("stdio")
        return
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_serve_http_forever, args.port, args.require_header)


if __name__ == "__main__":
    main()

"""The stand-in model server: a small HTTP/1.1 server on asyncio that plays scripts over both providers' wires.

Hand-written on ``asyncio.Protocol`` rather than an ASGI stack because it shares the event loop with the code it
measures: a non-streamed reply, or a stream without pacing, is parsed, played and written from ``data_received``
with no task, no extra copy and one ``write`` (tens of microseconds), and only paced streams get a task. It speaks
as much HTTP/1.1 as the SDKs' clients and curl use: keep-alive, ``Content-Length`` or chunked request bodies,
``Expect: 100-continue``, chunked responses for streams.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Protocol

from station_runtime.modelsim.anthropic_wire import AnthropicWire
from station_runtime.modelsim.openai_wire import OpenAIWire
from station_runtime.modelsim.script import DEFAULT_SCRIPTS, Attempts, ErrorStep, Prompt, Reply, Script, play

Frame = tuple[bool, bytes]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_SERVER = "modelsim (local stand-in, not a real model)"


class _Wire(Protocol):
    provider: str
    request_id_header: str

    def authorized(self, headers: Mapping[str, str]) -> bool: ...
    def unauthorized(self) -> tuple[str, str | None]: ...
    def header_problem(self, headers: Mapping[str, str]) -> str | None: ...
    def unknown_model(self, model: str) -> tuple[str, str | None]: ...
    def prompt(self, body: Any, raw_len: int) -> Prompt: ...
    def error_body(self, kind: str, message: str, code: str | None = None) -> bytes: ...
    def completion(self, reply: Reply, model: str) -> bytes: ...
    def stream(self, reply: Reply, model: str, body: Mapping[str, Any]) -> list[Frame]: ...
    def models(self, names: Iterable[str]) -> bytes: ...


_OPENAI: _Wire = OpenAIWire()
_ANTHROPIC: _Wire = AnthropicWire()
_ROUTES = {"/v1/chat/completions": _OPENAI, "/chat/completions": _OPENAI,
           "/v1/messages": _ANTHROPIC, "/messages": _ANTHROPIC}
#: Azure OpenAI's deployment paths (the api-version goes in the query).
_AZURE_ROUTE = re.compile(r"^/openai/deployments/[^/]+/chat/completions/?$")


@dataclass(frozen=True, slots=True)
class Recorded:
    """A request as received: which wire, the path (with query), headers (lower-case names) and the parsed body."""

    provider: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass(slots=True)
class _Head:
    method: str
    target: str
    headers: dict[str, str]
    end: int
    keep_alive: bool
    continue_sent: bool = False


@dataclass(slots=True)
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    frames: list[Frame] | None = None
    tokens_per_s: float | None = None


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _head_bytes(status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"server: {_SERVER}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _parse_head(buf: bytearray) -> _Head | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > _MAX_HEAD:
            raise _HttpError(431, "request head too large")
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t":
            raise _HttpError(400, "malformed header line")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if parts[2] == "HTTP/1.1" else "keep-alive" in connection
    return _Head(parts[0], parts[1], headers, end + 4, keep_alive)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: (body, end) once complete, else ``None``."""
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            raise _HttpError(400, "malformed chunk size") from None
        pos = eol + 2
        if size == 0:
            if buf[pos:pos + 2] == b"\r\n":
                return bytes(body), pos + 2
            trailers = buf.find(b"\r\n\r\n", pos)
            return None if trailers < 0 else (bytes(body), trailers + 4)
        if len(body) + size > _MAX_BODY:
            raise _HttpError(413, "request body too large")
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos:pos + size]
        pos += size + 2


class _Connection(asyncio.Protocol):
    """One client connection: requests are answered in order; a paced stream holds later ones until it ends."""

    def __init__(self, sim: ModelSim) -> None:
        self._sim = sim
        self._buf = bytearray()
        self._head: _Head | None = None
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports implement the interface without deriving from it.
        self._transport = transport  # type: ignore[assignment]
        self._sim._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._sim._connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        self.resume_writing()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None:
            self._serve()

    def eof_received(self) -> bool | None:
        return True if self._task is not None else None  # keep a half-closed connection open to finish a stream

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _next(self) -> tuple[_Head, bytes] | None:
        while self._buf[:2] == b"\r\n":  # tolerated between requests (RFC 9112 2.2)
            del self._buf[:2]
        if self._head is None:
            self._head = _parse_head(self._buf)
            if self._head is None:
                return None
        head = self._head
        if "chunked" in head.headers.get("transfer-encoding", "").lower():
            got = _dechunk(self._buf, head.end)
        else:
            try:
                length = int(head.headers.get("content-length", "0"))
            except ValueError:
                raise _HttpError(400, "malformed content-length") from None
            if not 0 <= length <= _MAX_BODY:
                raise _HttpError(413, "request body too large")
            got = (bytes(self._buf[head.end:head.end + length]), head.end + length) \
                if len(self._buf) >= head.end + length else None
        if got is None:
            if not head.continue_sent and head.headers.get("expect", "").lower() == "100-continue":
                head.continue_sent = True
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        del self._buf[:got[1]]
        self._head = None
        return head, got[0]

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    def _serve(self) -> None:
        while not self._closed:
            try:
                request = self._next()
            except _HttpError as e:
                body = json.dumps({"error": {"message": str(e), "type": "invalid_request_error"}}).encode()
                self._write(_head_bytes(e.status, [("content-type", "application/json"),
                                                   ("content-length", str(len(body)))], False) + body)
                self._close()
                return
            if request is None:
                return
            head, body = request
            response = self._sim._respond(head, body)
            if response.frames is None:
                self._write(_head_bytes(response.status, response.headers, head.keep_alive) + response.body)
            elif response.tokens_per_s is None:
                self._write(_head_bytes(response.status, response.headers, head.keep_alive)
                            + _chunk(b"".join(data for _, data in response.frames)) + b"0\r\n\r\n")
            else:
                self._task = asyncio.get_running_loop().create_task(self._paced(head, response))
                self._sim._tasks.add(self._task)
                self._task.add_done_callback(self._sim._tasks.discard)
                return
            if not head.keep_alive:
                self._close()
                return

    async def _paced(self, head: _Head, response: _Response) -> None:
        """Writes a stream one frame per chunk, each token frame at its due time (no drift over long streams)."""
        assert response.frames is not None and response.tokens_per_s is not None
        loop = asyncio.get_running_loop()
        interval = 1 / response.tokens_per_s
        self._write(_head_bytes(response.status, response.headers, head.keep_alive))
        start, count = loop.time(), 0
        for paced, data in response.frames:
            if paced:
                count += 1
                delay = start + count * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if self._drained is not None:
                await self._drained
            if self._closed:
                return
            self._write(_chunk(data))
        self._write(b"0\r\n\r\n")
        self._task = None
        if not head.keep_alive:
            self._close()
        elif self._buf:
            self._serve()

    def _close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()


class ModelSim:
    """A local stand-in model server for tests, demos and benchmarks; not a model, and it says so.

    Serves OpenAI chat completions at ``openai_base_url`` and Anthropic messages at ``anthropic_base_url`` (same
    port), playing the :class:`Script` whose name is the request's model. Use as ``async with ModelSim(...) as
    sim:`` (or ``await start()`` / ``await close()``) inside the event loop that should serve it.
    """

    def __init__(self, scripts: Iterable[Script] = (), *, tokens_per_s: float | None = None,
                 require_key: bool = False, host: str = "127.0.0.1", port: int = 0, record: bool = True,
                 max_recorded: int = 1000, defaults: bool = True, max_conversations: int = 10_000) -> None:
        if tokens_per_s is not None and not tokens_per_s > 0:
            raise ValueError(f"tokens_per_s must be > 0, got {tokens_per_s!r}")
        self.scripts: dict[str, Script] = {s.name: s for s in DEFAULT_SCRIPTS} if defaults else {}
        for script in scripts:
            self.add(script)
        self.tokens_per_s = tokens_per_s
        self.require_key = require_key
        self.host = host
        self.port = port
        self.record = record
        self.max_recorded = max_recorded
        self.requests: list[Recorded] = []
        self._attempts = Attempts(max_conversations)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, script: Script) -> None:
        """Adds or replaces the script for ``script.name``; takes effect for the next request."""
        self.scripts[script.name] = script

    def reset(self) -> None:
        """Forgets recorded requests and scripted-error attempts (so ``times`` counts from zero again)."""
        self.requests.clear()
        self._attempts.clear()

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else "[::1]" if self.host == "::" else self.host
        return f"http://{f'[{host}]' if ':' in host and not host.startswith('[') else host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    async def start(self) -> ModelSim:
        """Starts listening (on a free port when ``port`` is 0, then ``port`` tells which)."""
        loop = asyncio.get_running_loop()
        # A deep backlog: benchmarks open hundreds of connections at once, and a full queue costs a 1 s SYN retry.
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stops listening, drops open connections and ends streams in flight."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> ModelSim:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- answering ------------------------------------------------------------------------------------------------

    def _respond(self, head: _Head, raw: bytes) -> _Response:
        path = head.target.partition("?")[0]
        wire = _ROUTES.get(path.rstrip("/"))
        if wire is None and _AZURE_ROUTE.match(path):
            wire = _OPENAI
        if wire is None:
            return self._other(head, path)
        if head.method != "POST":
            return self._error(wire, 405, "bad_request", f"Method {head.method} is not allowed for {path}")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self.record:
            self.requests.append(Recorded(wire.provider, head.target, head.headers, body))
            if len(self.requests) > self.max_recorded:
                del self.requests[:len(self.requests) - self.max_recorded]
        if body is None:
            return self._error(wire, 400, "bad_request", "We could not parse the JSON body of your request.")
        if self.require_key and not wire.authorized(head.headers):
            return self._error(wire, 401, "auth", *wire.unauthorized())
        problem = wire.header_problem(head.headers)
        if problem is not None:
            return self._error(wire, 400, "bad_request", problem)
        try:
            prompt = wire.prompt(body, len(raw))
        except ValueError as e:
            return self._error(wire, 400, "bad_request", str(e))
        script = self.scripts.get(prompt.model)
        if script is None:
            return self._error(wire, 404, "not_found", *wire.unknown_model(prompt.model))
        outcome = play(script, prompt, self._attempts)
        if isinstance(outcome, ErrorStep):
            return self._error(wire, outcome.status, outcome.kind, outcome.message, retry_after=outcome.retry_after_s)
        request_id = (wire.request_id_header, _request_id())
        if prompt.stream:
            pace = script.tokens_per_s if script.tokens_per_s is not None else self.tokens_per_s
            return _Response(200, [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
                                   ("transfer-encoding", "chunked"), request_id],
                             frames=wire.stream(outcome, prompt.model, body),
                             tokens_per_s=None if pace is None or math.isinf(pace) else pace)
        data = wire.completion(outcome, prompt.model)
        return _Response(200, [("content-type", "application/json"), ("content-length", str(len(data))), request_id],
                         data)

    def _other(self, head: _Head, path: str) -> _Response:
        """Everything but the two APIs: a health check, the model lists, and 404s in the likely caller's shape."""
        wire = _ANTHROPIC if "anthropic-version" in head.headers else _OPENAI
        if head.method == "GET" and path.rstrip("/") in ("/v1/models", "/models"):
            data = wire.models(self.scripts)
        elif head.method == "GET" and path in ("/", "/health"):
            data = json.dumps({"status": "ok", "server": _SERVER, "models": list(self.scripts)}).encode()
        else:
            return self._error(wire, 404, "not_found", f"Unknown request URL: {head.method} {path}")
        return _Response(200, [("content-type", "application/json"), ("content-length", str(len(data)))], data)

    def _error(self, wire: _Wire, status: int, kind: str, message: str, code: str | None = None, *,
               retry_after: float | None = None) -> _Response:
        data = wire.error_body(kind, message, code)
        headers = [("content-type", "application/json"), ("content-length", str(len(data))),
                   (wire.request_id_header, _request_id())]
        if retry_after is not None:
            headers.append(("retry-after", f"{retry_after:g}"))
        return _Response(status, headers, data)


def _request_id() -> str:
    return "req_" + os.urandom(12).hex()

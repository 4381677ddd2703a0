"""A tiny HTTP endpoint for Kubernetes probes and Prometheus: ``/healthz`` (the process lives), ``/readyz``
(connected to NATS, agents loaded, not draining) and ``/metrics`` (the process's metrics, Prometheus text). Plain
asyncio: no web framework in the station's import path. Stations, ``lattice up``, ``lattice controller`` and the
operator serve it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ..telemetry import metrics


class HealthServer:
    def __init__(self, port: int, ready: Callable[[], bool] = lambda: True, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
            path = line.split(b" ")[1] if line.count(b" ") >= 2 else b"/"
            content_type = b"text/plain; charset=utf-8"
            if path.startswith(b"/metrics"):
                # Rendering reads every instrument: off the event loop, so a scrape never stalls the station.
                body, status = await asyncio.to_thread(metrics.render), b"200 OK"
                content_type = metrics.CONTENT_TYPE.encode()
            else:
                ok = path.startswith(b"/healthz") or (path.startswith(b"/readyz") and self._ready())
                body = b"ok\n" if ok else b"not ready\n"
                status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

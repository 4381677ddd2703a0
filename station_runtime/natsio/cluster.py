"""A cluster of real ``nats-server`` processes on loopback (routes, JetStream on disk), for the tests and benchmarks
that must see what a production lattice sees: replicated buckets, leader elections, a server killed with -9.

Each member is an :class:`EmbeddedNats` with its own store and a fixed client and route port (picked free at
first start and kept, so a restarted member comes back where its peers and the clients look for it). Clients are
given every member's URL (:attr:`EmbeddedCluster.url` joins them with commas, as ``LATTICE_NATS_URL`` takes them).
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from .embedded import EmbeddedNats, NatsServerError

CLUSTER_NAME = "lattice"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports nobody listens on right now (held open together so that they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EmbeddedCluster:
    """``async with EmbeddedCluster(3) as cluster: cluster.url``; ``await cluster.kill(name)``, ``start(name)``."""

    def __init__(self, size: int = 3, root: Path | str | None = None, *, sync_always: bool = True,
                 max_file_store_bytes: int | None = 8 * 1024 ** 3, start_timeout_s: float = 30.0) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one server, not {size}")
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="lattice-cluster-")
        self.root = Path(root or self._tmp.name)  # type: ignore[union-attr]
        client_ports, route_ports = free_ports(size), free_ports(size)
        self.names = [f"n{i + 1}" for i in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
        self.members: dict[str, EmbeddedNats] = {}
        for name, client_port, route_port in zip(self.names, client_ports, route_ports, strict=True):
            # A route to itself is recognised and ignored by the server: every member gets the same list.
            extra = (f'server_name: "{name}"\n'
                     f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: "127.0.0.1:{route_port}"\n'
                     f"  routes: [{routes}]\n}}\n")
            self.members[name] = EmbeddedNats(self.root / name, port=client_port, sync_always=sync_always,
                                              extra_config=extra, max_file_store_bytes=max_file_store_bytes,
                                              start_timeout_s=start_timeout_s, monitoring=True)
        self.urls = [f"nats://127.0.0.1:{p}" for p in client_ports]

    @property
    def url(self) -> str:
        """Every member's URL, comma-separated (what clients are given: they fail over between them)."""
        return ",".join(self.urls)

    def running(self) -> list[str]:
        return [name for name, member in self.members.items() if member.running]

    async def start(self, name: str | None = None) -> None:
        """Start one member, or all (concurrently), and wait until JetStream is healthy on every running one: a
        meta leader elected is not enough, a member still catching up times the first API requests out."""
        names = [name] if name else self.names
        await asyncio.gather(*(self.members[n].start() for n in names))
        await self.wait_for_meta_leader()
        await self.wait_healthy()

    def healthy(self, name: str) -> bool:
        """The member's ``/healthz``: 200 once its JetStream is current (meta group and streams)."""
        base = self.members[name].monitor_url
        if base is None:
            return False
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2.0) as response:  # loopback only
                return bool(response.status == 200)
        except OSError:  # 503 while it catches up (an HTTPError is an OSError), or not listening yet
            return False

    async def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not all(await asyncio.gather(*(asyncio.to_thread(self.healthy, n) for n in self.running()))):
            if asyncio.get_running_loop().time() > deadline:
                raise NatsServerError(f"JetStream not healthy on every member after {timeout_s:.0f}s: "
                                      f"{ {n: self.healthy(n) for n in self.running()} }")
            await asyncio.sleep(0.1)

    async def kill(self, name: str) -> None:
        """kill -9 of one member (its store is kept; :meth:`start` brings it back)."""
        await self.members[name].stop(kill=True)

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.members.values()))

    def jsz(self, name: str) -> dict[str, Any]:
        """One running member's JetStream view (its monitoring ``/jsz``)."""
        base = self.members[name].monitor_url
        if base is None:
            raise NatsServerError(f"cluster member {name} is not running")
        with urllib.request.urlopen(f"{base}/jsz", timeout=2.0) as response:  # loopback only
            data: dict[str, Any] = json.load(response)
        return data

    def meta_leader(self) -> str | None:
        """The JetStream meta leader as a running member sees it (None while it is being elected)."""
        for name in self.running():
            try:
                leader = (self.jsz(name).get("meta_cluster") or {}).get("leader")
            except OSError:
                continue
            if leader:
                return str(leader)
        return None

    async def wait_for_meta_leader(self, timeout_s: float = 30.0) -> str:
        """The meta leader, once the running members have elected one."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (leader := await asyncio.to_thread(self.meta_leader)) is None or leader not in self.running():
            if asyncio.get_running_loop().time() > deadline:
                raise NatsServerError(f"no JetStream meta leader after {timeout_s:.0f}s among {self.running()}")
            await asyncio.sleep(0.1)
        return leader

    async def __aenter__(self) -> EmbeddedCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

"""The servers a run starts for itself: nats-server (from the wheel) and redis-server (from Debian), both on
free loopback ports, both without fsync so that neither system pays for durability the other skips."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import Child, Skipped, free_port


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def redis_server_version() -> str | None:
    path = redis_server_path()
    if path is None:
        return None
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return None


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence (RDB and AOF off), in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> str:
        path = redis_server_path()
        if path is None:
            raise Skipped("redis-server is not installed (bench/setup.sh installs it: apt-get install redis-server)")
        self.port = free_port()
        self.child = Child([path, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                            "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes"],
                           self.workdir / "redis.log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return self.url
            except OSError:
                if not self.child.alive():
                    break
                await asyncio.sleep(0.02)
        raise RuntimeError(f"redis-server did not start:\n{self.child.tail()}")

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

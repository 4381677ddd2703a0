"""Lattice fixtures' building blocks: in-process stations and station child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from station_runtime.api.models import Agent, AgentSpec, ModelSpec, ObjectMeta
from station_runtime.natsio.connect import NatsSettings
from station_runtime.station.runtime import Station
from station_runtime.station.settings import StationSettings


def echo_agent(name: str, *, capabilities: list[str] | None = None, labels: dict[str, str] | None = None,
               **params: Any) -> Agent:
    return Agent(metadata=ObjectMeta(name=name, labels=labels or {}),
                 spec=AgentSpec(capabilities=capabilities or [], model=ModelSpec(provider="echo", params=params)))


def python_agent(name: str, function: str, **kwargs: Any) -> Agent:
    return Agent(metadata=ObjectMeta(name=name),
                 spec=AgentSpec(model=ModelSpec(provider="python", function=function), **kwargs))


@asynccontextmanager
async def running_station(url: str, org: str, station_id: str, **kwargs: Any) -> AsyncIterator[Station]:
    kwargs.setdefault("heartbeat_interval_s", 0.5)
    kwargs.setdefault("drain_timeout_s", 5.0)
    station = Station(StationSettings(org=org, station_id=station_id, nats=NatsSettings(url=url), **kwargs))
    await station.start()
    try:
        yield station
    finally:
        await station.stop("test over")


class StationProcess:
    """``lattice station run`` as a real child process, for SIGKILL/SIGTERM tests."""

    def __init__(self, url: str, org: str, station_id: str, log_dir: Path, *args: str,
                 heartbeat_s: float = 0.5, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self.station_id = station_id
        self.log_path = log_dir / f"{station_id}.log"
        self.argv = [sys.executable, "-m", "station_runtime", "--nats", url, "--org", org, "station", "run",
                     "--station-id", station_id, "--heartbeat-interval", str(heartbeat_s), *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StationProcess:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "log"):
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

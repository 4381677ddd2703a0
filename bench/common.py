"""What every scenario shares: run modes, timing loops, percentiles, child processes, RSS, machine facts.

Loops are bounded twice, by count and by wall time, so a scenario always stops by itself. Child processes die
with the runner (PR_SET_PDEATHSIG), so an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station_runtime.natsio.procutil import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
#: Every system gets the same task input: 100 bytes.
PAYLOAD = "x" * 100


@dataclass(frozen=True)
class Mode:
    name: str
    #: Sequential round trips per latency scenario (after ``warmup``), and the wall-time cap on them.
    latency_n: int
    warmup: int
    latency_max_s: float
    #: Tasks per throughput run, in flight at once, wall-time cap.
    throughput_n: int
    concurrency: int
    throughput_max_s: float
    #: Station counts of ``lattice_work``; the largest one is also where the auction close time is measured.
    station_counts: tuple[int, ...]
    #: Sequential submissions measured on the large lattice.
    big_lattice_n: int
    competitors: bool
    recovery_trials: int
    #: Also measure the floor with a plain-asyncio responder (for the record; the targets use the uvloop one).
    floor_asyncio: bool = False


MODES: dict[str, Mode] = {
    "full": Mode("full", latency_n=2000, warmup=200, latency_max_s=40.0, throughput_n=6000, concurrency=50,
                 throughput_max_s=30.0, station_counts=(1, 3, 10, 50), big_lattice_n=500, competitors=True,
                 recovery_trials=3, floor_asyncio=True),
    # Under a minute: 50 station processes alone take ~20 s to start on 2 cores, so no 10-station step.
    "quick": Mode("quick", latency_n=150, warmup=20, latency_max_s=3.0, throughput_n=400, concurrency=50,
                  throughput_max_s=3.0, station_counts=(1, 3, 50), big_lattice_n=60, competitors=True,
                  recovery_trials=1),
    # The test suite's smoke run: proves the runner and the JSON, measures nothing worth reading.
    "smoke": Mode("smoke", latency_n=20, warmup=5, latency_max_s=5.0, throughput_n=40, concurrency=8,
                  throughput_max_s=5.0, station_counts=(1, 3), big_lattice_n=10, competitors=False,
                  recovery_trials=0),
}


class Skipped(Exception):
    """A scenario that cannot run here (a package or redis-server is missing); the reason goes in the JSON."""


# --- timing ---------------------------------------------------------------------------------------------------


async def sample(fn: Callable[[], Awaitable[Any]], n: int, *, warmup: int, max_s: float) -> list[float]:
    """Seconds per call of ``fn``, one at a time: ``warmup`` unrecorded calls, then up to ``n`` or ``max_s``."""
    for _ in range(warmup):
        await fn()
    out: list[float] = []
    clock = time.perf_counter
    stop = clock() + max_s
    while len(out) < n and clock() < stop:
        t0 = clock()
        await fn()
        out.append(clock() - t0)
    return out


async def closed_loop(fn: Callable[[], Awaitable[Any]], n: int, *, concurrency: int, max_s: float) -> float:
    """Throughput (calls per second) of ``concurrency`` callers each calling ``fn`` back to back, ``n`` calls in
    all or until ``max_s``."""
    started = 0
    done = 0
    clock = time.perf_counter
    stop = clock() + max_s

    async def worker() -> None:
        nonlocal started, done
        while started < n and clock() < stop:
            started += 1
            await fn()
            done += 1

    t0 = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (clock() - t0)


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` (seconds), in microseconds."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index] * 1e6


def summary(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_us": round(percentile(samples, 50), 1),
            "p90_us": round(percentile(samples, 90), 1), "p99_us": round(percentile(samples, 99), 1),
            "mean_us": round(sum(samples) / len(samples) * 1e6, 1) if samples else float("nan")}


# --- processes ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A child process with its output in a log file; terminated (then killed) on :meth:`stop`."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=ROOT,
                                     preexec_fn=die_with_parent())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_all(children: list[Child]) -> None:
    """Terminate all at once, then wait: 50 stations drain in parallel, not one after the other."""
    for child in children:
        if child.alive():
            child.proc.terminate()
    for child in children:
        child.stop()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def python() -> str:
    return sys.executable

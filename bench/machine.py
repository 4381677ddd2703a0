"""What a benchmark run records about the machine and the versions it measured, so that runs can be compared."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.common import ROOT
from bench.services import redis_server_version


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    from station_runtime.natsio.embedded import find_nats_server

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nats_server = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
    except Exception:
        nats_server = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=ROOT, timeout=10).stdout.strip())
    except Exception:
        commit, dirty = "", False
    mem_gib = None
    try:
        mem_gib = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "os": platform.platform(),
        # Other work on the machine skews everything: recorded so that a noisy run can be recognised.
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "nats_server": nats_server, "redis_server": redis_server_version(),
        "nats_py": _version("nats-py"), "uvloop": _version("uvloop"), "pydantic": _version("pydantic"),
        "celery": _version("celery"), "kombu": _version("kombu"), "redis_py": _version("redis"),
        "taskiq": _version("taskiq"), "taskiq_nats": _version("taskiq-nats"), "taskiq_redis": _version("taskiq-redis"),
        "git_commit": commit + ("-dirty" if dirty else ""),
    }

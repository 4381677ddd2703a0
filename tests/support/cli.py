"""Running the ``lattice`` CLI as a separate process, as a user would."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


async def lattice(*args: str, env: dict[str, str] | None = None, timeout_s: float = 30.0,
                  stdin: bytes | None = None) -> CliResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station_runtime", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    return CliResult(proc.returncode or 0, out.decode(), err.decode())

"""Lets ``lattice get stations`` in another terminal find the lattice that ``lattice up`` started, without flags.

``lattice up`` writes ``$XDG_STATE_HOME/station-lattice/current.json`` (url, org, pid, and the path of the org's
admin creds, which only this user can read) and removes it on exit; a file whose pid is gone is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "station-lattice" / "current.json"


def write_current(url: str, org: str, creds: Path | None = None) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "org": org, "pid": os.getpid(),
                               "creds": str(creds.resolve()) if creds else None}))
    tmp.replace(path)


def clear_current() -> None:
    current = read_current(check_alive=False)
    if current and current.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            state_file().unlink()


def read_current(*, check_alive: bool = True) -> dict[str, Any] | None:
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    if check_alive:
        try:
            os.kill(int(data.get("pid", 0)), 0)
        except (OSError, ValueError):
            return None
    return data

"""The state one run hands to every scenario: the mode, a work directory, the servers, and the results."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Mode
from bench.services import RedisServer

log = logging.getLogger("bench")


@dataclass
class RunContext:
    mode: Mode
    workdir: Path
    nats_url: str
    nats_pid: int | None = None
    #: The flat keys of ``latest.json`` (the issue's list), filled in by the scenarios.
    results: dict[str, Any] = field(default_factory=dict)
    #: Every measurement in detail, by scenario name.
    details: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None

    def record(self, name: str, data: dict[str, Any]) -> None:
        self.details[name] = data
        shown = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
        log.info("%-34s %s", name, " ".join(f"{k}={v}" for k, v in shown.items()))

    async def redis_url(self) -> str:
        """A redis-server for this run, started on first use (raises Skipped if it is not installed)."""
        if self.redis is None:
            self.redis = RedisServer(self.workdir)
            await self.redis.start()
        return self.redis.url

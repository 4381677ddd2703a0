"""Connecting to NATS with defaults fit for long-lived processes.

nats-py gives up after 60 reconnect attempts (~2 minutes) by default; a station or operator must never give up,
so reconnects are unlimited. Credentials (token, nkey seed, creds file) are passed through, never logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client as NatsClient

from ..errors import AccountLimitError
from .limits import explain_limit

log = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"
#: The environment variable of each connection setting (also the CLI's global options' ``envvar``).
ENV = {"url": "LATTICE_NATS_URL", "token": "LATTICE_NATS_TOKEN", "nkey_seed_file": "LATTICE_NATS_NKEY_SEED_FILE",
       "creds_file": "LATTICE_NATS_CREDS", "inbox_prefix": "LATTICE_NATS_INBOX_PREFIX"}


@dataclass(frozen=True)
class NatsSettings:
    url: str = DEFAULT_URL
    token: str | None = field(default=None, repr=False)
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    #: Inbox prefix for replies. In JWT mode each station gets its own (``_INBOX_<station>``) and may subscribe to
    #: nothing else, so that it cannot read replies meant for other stations of its org.
    inbox_prefix: str | None = None
    name: str = "lattice"
    connect_timeout_s: float = 3.0
    reconnect_wait_s: float = 0.5
    #: -1: never give up. Clients such as the CLI set a finite number so they fail fast.
    max_reconnect_attempts: int = -1

    @classmethod
    def from_env(cls, **overrides: Any) -> NatsSettings:
        """From the ``LATTICE_NATS_*`` variables (:data:`ENV`); ``overrides`` that are not None win."""
        env = os.environ
        values: dict[str, Any] = {"url": env.get(ENV["url"], DEFAULT_URL)}
        for name in ("token", "inbox_prefix"):
            values[name] = env.get(ENV[name]) or None
        for name in ("nkey_seed_file", "creds_file"):
            values[name] = Path(p) if (p := env.get(ENV[name])) else None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads, for a child process (a station started by ``lattice up``)."""
        values = {"url": self.url, "token": self.token, "nkey_seed_file": self.nkey_seed_file,
                  "creds_file": self.creds_file, "inbox_prefix": self.inbox_prefix}
        return {ENV[name]: str(value) for name, value in values.items() if value}

    @property
    def servers(self) -> list[str]:
        """The servers to connect to: ``url`` may name several, comma-separated (every member of a NATS
        cluster); the client fails over between them and learns the rest of the cluster from the server."""
        return server_list(self.url)

    def describe(self) -> str:
        """Where and how we connect, without any secret."""
        auth = "creds" if self.creds_file else "nkey" if self.nkey_seed_file else "token" if self.token else "none"
        return f"{self.url} (auth: {auth})"


def server_list(url: str) -> list[str]:
    """The URLs of a comma-separated list (``nats://a:4222,nats://b:4222``), each stripped; a list with none
    is refused, so that a mistyped setting says so instead of connecting to nats-py's default."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"no NATS server URL in {url!r}: give one, or several separated by commas")
    return servers


class OutageLog:
    """One log line per change of a connection's state: lost; still down after 10 s, 1 min, 5 min, ... ; back
    after how long. nats-py reports every failed reconnect attempt (one every ``reconnect_wait_s``): logged as they
    come, a minute's outage was 130 lines from one process, and live views were torn by them."""

    #: Seconds into an outage at which it is said to go on (then every hour).
    REMINDERS: Final = (10.0, 60.0, 300.0, 900.0, 3600.0)

    def __init__(self, name: str, logger: logging.Logger = log, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._log = logger
        self._clock = clock
        self.down_since: float | None = None
        self._reminded = 0
        self.lines = 0
        self._limit_said: str | None = None
        self._limit_said_at = 0.0

    def lost(self) -> None:
        if self.down_since is not None:
            return
        self.down_since, self._reminded = self._clock(), 0
        self._say(logging.WARNING, "NATS connection lost (%s); reconnecting", self.name)

    def error(self, exc: BaseException) -> None:
        """A failed reconnect attempt while down (silent but for the reminders), or an error while connected. An
        account limit the server enforces is said as such, with the setting to raise, whenever it is hit."""
        if (limit := explain_limit(str(exc))) is not None:
            # Said once a minute while it lasts: a client at the connection limit retries every attempt.
            now = self._clock()
            if limit != self._limit_said or now - self._limit_said_at >= 60.0:
                self._limit_said, self._limit_said_at = limit, now
                self._say(logging.ERROR, "NATS (%s): %s", self.name, limit)
            return
        if self.down_since is None:
            self._say(logging.WARNING, "NATS error (%s): %s", self.name, exc)
            return
        down_s = self._clock() - self.down_since
        due = self.REMINDERS[self._reminded] if self._reminded < len(self.REMINDERS) else \
            self.REMINDERS[-1] * (self._reminded - len(self.REMINDERS) + 2)
        if down_s >= due:
            self._reminded += 1
            self._say(logging.WARNING, "NATS still down (%s) after %.0fs: %s", self.name, down_s, exc)

    def back(self) -> None:
        if self.down_since is None:
            return
        down_s, self.down_since = self._clock() - self.down_since, None
        self._say(logging.WARNING, "NATS back (%s) after %.1fs", self.name, down_s)

    @property
    def limit_said(self) -> str | None:
        """The last account limit the server reported on this connection (its explanation), if any."""
        return self._limit_said

    def _say(self, level: int, message: str, *args: object) -> None:
        self.lines += 1
        self._log.log(level, message, *args)


async def connect(
    settings: NatsSettings,
    *,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_closed: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    outage = OutageLog(settings.name)

    async def error_cb(exc: Exception) -> None:
        outage.error(exc)

    nc = NatsClient()

    async def disconnected_cb() -> None:
        if nc.is_closed or nc.is_draining:
            return
        outage.lost()
        if on_disconnect:
            await on_disconnect()

    async def closed_cb() -> None:
        # nats-py closes a connection for good on any server error but a permission violation (an account limit
        # such as "maximum subscriptions exceeded" among them): say why, with the setting when it is a limit.
        if (err := nc.last_error) is not None:
            outage.error(err)
        if on_closed is not None:
            await on_closed()

    async def reconnected_cb() -> None:
        outage.back()
        if on_reconnect:
            await on_reconnect()

    options: dict[str, Any] = {
        "servers": settings.servers,
        "name": settings.name,
        "connect_timeout": settings.connect_timeout_s,
        "reconnect_time_wait": settings.reconnect_wait_s,
        "max_reconnect_attempts": settings.max_reconnect_attempts,
        "allow_reconnect": True,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "closed_cb": closed_cb,
        "ping_interval": 10,
        # A drain waits for every subscription to empty; one whose reader is gone would hold shutdown for 30 s.
        "drain_timeout": 5,
        "max_outstanding_pings": 3,
    }
    if settings.token:
        options["token"] = settings.token
    if settings.nkey_seed_file:
        options["nkeys_seed"] = str(settings.nkey_seed_file)
    if settings.creds_file:
        options["user_credentials"] = str(settings.creds_file)
    if settings.inbox_prefix:
        options["inbox_prefix"] = settings.inbox_prefix
    try:
        await nc.connect(**options)
    except Exception as exc:
        # nats-py ends a failed connect with "no servers available"; what the server said is the reason.
        if outage.limit_said is not None:
            raise AccountLimitError(outage.limit_said) from exc
        raise
    return nc

"""A station's credentials end (their user JWT expires) and are renewed by the control plane, which writes a new
creds file in place (the operator: the Secret the pod mounts; ``lattice up``: the file in its state dir). The
server disconnects a user whose JWT expired, and nats-py then closes the connection for good instead of
reconnecting, so the station must move to the new creds *before* that: it checks the file every few seconds, and
once it holds other creds it reconnects (nats-py reads the creds file at each connect). Creds close to their end
that were not renewed are said, with time to act.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from ..natsauth import JwtError, parse_creds
from ..natsauth.jwt import decode

log = logging.getLogger(__name__)

#: How often the creds file is looked at: renewals come well before the end (a third of the lifetime).
CHECK_INTERVAL_S: Final = 5.0
#: Creds this close to their end and not renewed are warned about.
WARN_BEFORE_S: Final = 120.0


def expires_at(creds_text: str) -> int | None:
    """Pure: the unix time a ``.creds`` text's user JWT ends, or None (no expiry, or not a creds text)."""
    try:
        exp = decode(parse_creds(creds_text).jwt).claims.get("exp")
    except (JwtError, ValueError):
        return None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None


class CredsFollower:
    """``await CredsFollower(path, reconnect).run()`` (cancel to stop)."""

    def __init__(self, path: Path, reconnect: Callable[[], Awaitable[None]], *,
                 interval_s: float = CHECK_INTERVAL_S, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._reconnect = reconnect
        self.interval_s = interval_s
        self._clock = clock
        self._current = self._read()
        self._warned_for: int | None = None
        #: Times the station moved to renewed creds.
        self.renewals = 0

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    async def check(self) -> bool:
        """One look at the file: reconnect if it holds other (complete) creds; True when it did."""
        text = self._read()
        if text is not None and text != self._current:
            try:
                parse_creds(text)
            except ValueError:  # a file caught mid-write by a writer that does not rename: next look
                return False
            self._current = text
            self.renewals += 1
            log.info("creds in %s renewed (valid until %s): reconnecting with them", self.path,
                     _when(expires_at(text)))
            await self._reconnect()
            return True
        end = expires_at(self._current or "")
        if end is not None and end - self._clock() < WARN_BEFORE_S and self._warned_for != end:
            self._warned_for = end
            log.warning("creds in %s end at %s and were not renewed: the server will refuse this station then; "
                        "check the operator (or `lattice up`) that issues them", self.path, _when(end))
        return False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception as exc:  # a reconnect that failed is nats-py's to retry; the follower goes on
                log.warning("creds follower: %r", exc)


def _when(unix: int | None) -> str:
    return "never" if unix is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))

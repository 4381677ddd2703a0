"""Presence: the station's record in the ``stations`` bucket, refreshed by every heartbeat.

The bucket's max age is a few heartbeat intervals, so a station killed with -9 disappears from the registry by
itself. The record has one writer (its station), but two processes started with the same id by mistake would
fight over it: every write is a CAS on our last revision, and a conflict with a record of another process is
reported loudly instead of silently overwritten each beat.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from .. import __version__
from ..contract import subjects
from ..contract.codec import decode, encode
from ..contract.errors import DecodeError
from ..contract.messages import (
    MAX_HELD_LISTED,
    Goodbye,
    Heartbeat,
    PresenceAnnounce,
    StationRecord,
    StationStatus,
    utcnow,
)
from .settings import StationSettings

log = logging.getLogger(__name__)

#: A station record names at most this many agents it could not load, each error cut to this many characters.
MAX_AGENT_ERRORS = 32
MAX_AGENT_ERROR_CHARS = 300
#: A record lists this many tools per agent (of at most MAX_AGENT_ERRORS agents), each this long at most: with
#: the errors, well inside the 64 KiB a station record may have.
MAX_TOOLS_LISTED = 16
MAX_TOOL_NAME_CHARS = 80


@dataclass(frozen=True)
class StationSnapshot:
    """What a heartbeat reports that changes while the station runs."""

    load: int
    agents: list[str]
    #: Capabilities of the hosted agents (the station's own come from its settings).
    agent_capabilities: set[str]
    status: StationStatus
    #: Agents selected for this station that it could not load, with why.
    agent_errors: dict[str, str] = field(default_factory=dict)
    #: The tools of each hosted agent (``source:name``).
    agent_tools: dict[str, list[str]] = field(default_factory=dict)
    #: Work accepted and not finished (running or queued), oldest first.
    holding: list[str] = field(default_factory=list)


class Presence:
    def __init__(self, nc: NatsClient, kv: KeyValue, settings: StationSettings,
                 snapshot: Callable[[], StationSnapshot]) -> None:
        self._nc = nc
        self._kv = kv
        self._settings = settings
        self._snapshot = snapshot
        self._revision: int | None = None
        self._seq = 0
        self.started_at: datetime = utcnow()
        self.heartbeat_interval_s = settings.heartbeat_interval_s
        self.duplicate_warnings = 0

    def record(self) -> StationRecord:
        now = self._snapshot()
        s = self._settings
        return StationRecord(
            org=s.org, station_id=s.station_id, capabilities=sorted(set(s.capabilities) | now.agent_capabilities),
            labels=s.labels, capacity=s.max_concurrency, load=now.load, agents=sorted(now.agents),
            version=__version__, status=now.status, heartbeat_interval_s=self.heartbeat_interval_s,
            started_at=self.started_at, last_heartbeat=utcnow(), pid=os.getpid(), hostname=socket.gethostname(),
            answers_ping=True, agent_errors=agent_errors(now.agent_errors), agent_tools=agent_tools(now.agent_tools),
            holding=now.holding[:MAX_HELD_LISTED], lists_holding=True,
        )

    async def previous(self) -> StationRecord | None:
        """The record a previous run of this station id left, if it is still there (it expires three beats after
        its last): what it held when it stopped. None when there is none or it is unreadable, or when it is ours."""
        with contextlib.suppress(KeyNotFoundError):
            entry = await self._kv.get(self._settings.station_id)
            stored = _stored(entry.value or b"")
            if stored is not None and stored.started_at < self.started_at:
                return stored
        return None

    async def announce(self) -> StationRecord:
        record = self.record()
        await self._write(record)
        await self._nc.publish(subjects.presence(self._settings.org, "announce"),
                               encode(PresenceAnnounce(record=record)))
        return record

    async def heartbeat(self) -> StationRecord:
        record = self.record()
        await self._write(record)
        self._seq += 1
        beat = Heartbeat(station_id=record.station_id, seq=self._seq, load=record.load, capacity=record.capacity,
                         status=record.status)
        await self._nc.publish(subjects.presence(self._settings.org, "heartbeat"), encode(beat))
        return record

    async def goodbye(self, reason: str) -> None:
        await self._nc.publish(subjects.presence(self._settings.org, "goodbye"),
                               encode(Goodbye(station_id=self._settings.station_id, reason=reason)))
        if self._revision is not None:
            key = self._settings.station_id
            try:
                await self._kv.delete(key, last=self._revision)
            except KeyNotFoundError:
                pass  # expired already
            except KeyWrongLastSequenceError:
                # A beat of ours landed after we last heard (its write was cancelled in flight), or another
                # process took our id over: delete the record only if it is still ours.
                with contextlib.suppress(KeyNotFoundError, KeyWrongLastSequenceError):
                    entry = await self._kv.get(key)
                    stored = _stored(entry.value or b"")
                    if stored is not None and _written_by_me(stored):
                        await self._kv.delete(key, last=entry.revision or 0)
        self._revision = None

    async def _write(self, record: StationRecord) -> None:
        key, data = record.station_id, encode(record)
        try:
            if self._revision is None:
                self._revision = await self._kv.create(key, data)
            else:
                self._revision = await self._kv.update(key, data, last=self._revision)
            return
        except KeyWrongLastSequenceError:
            pass
        # Our revision is stale: the key expired (we missed beats), or is left from our previous life (restart
        # with the same id), or another live process uses our id.
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            self._revision = await self._kv.create(key, data)
            return
        self._warn_if_duplicate(entry.value or b"")
        self._revision = await self._kv.update(key, data, last=entry.revision or 0)

    def _warn_if_duplicate(self, value: bytes) -> None:
        other = _stored(value)
        if other is None:
            return
        if not _written_by_me(other) and other.started_at > self.started_at:
            self.duplicate_warnings += 1
            log.error("another process (pid %s on %s) uses station id %r; station ids must be unique",
                      other.pid, other.hostname, other.station_id)


def _stored(value: bytes) -> StationRecord | None:
    """A registry record as stored, or None if it cannot be read."""
    try:
        return decode(value, StationRecord)
    except DecodeError:
        return None


def _written_by_me(record: StationRecord) -> bool:
    """Whether this process wrote ``record`` (same pid on the same host), not another one using our id."""
    return (record.pid, record.hostname) == (os.getpid(), socket.gethostname())


def agent_errors(errors: dict[str, str]) -> dict[str, str]:
    """Pure: the load errors a station record carries, bounded (a record is read by every auction)."""
    out = {}
    for name in sorted(errors)[:MAX_AGENT_ERRORS]:
        message = errors[name]
        out[name] = message if len(message) <= MAX_AGENT_ERROR_CHARS else message[: MAX_AGENT_ERROR_CHARS - 1] + "…"
    return out


def agent_tools(tools: dict[str, list[str]]) -> dict[str, list[str]]:
    """Pure: the tool listing a station record carries, bounded like the errors (a record has 64 KiB): at most
    MAX_TOOLS_LISTED names per agent, each cut at MAX_TOOL_NAME_CHARS, the rest counted in a last entry."""
    out = {}
    for name in sorted(tools)[:MAX_AGENT_ERRORS]:
        names = [n[:MAX_TOOL_NAME_CHARS] for n in tools[name]]
        if len(names) > MAX_TOOLS_LISTED:
            names = [*names[:MAX_TOOLS_LISTED - 1], f"+{len(names) - MAX_TOOLS_LISTED + 1} more"]
        out[name] = names
    return out

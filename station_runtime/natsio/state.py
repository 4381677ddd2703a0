"""The org's JetStream state: KV buckets ``stations``, ``agents``, ``work`` and the ``events`` stream.

Buckets are created on first use by whoever gets there first (a station, ``lattice up``, the operator); creating
an existing bucket with the same config is a no-op, so concurrent starters do not race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RePublish, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from ..contract import subjects
from .requests import Requests

log = logging.getLogger(__name__)

#: A station's registry entry vanishes this long after its last heartbeat (3 missed beats at the default 2 s).
DEFAULT_PRESENCE_TTL_S: Final = 6.0
DEFAULT_EVENTS_MAX_AGE_S: Final = 7 * 24 * 3600.0
DEFAULT_EVENTS_MAX_BYTES: Final = 256 * 1024 * 1024


@dataclass(frozen=True)
class StateLimits:
    presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S
    events_max_age_s: float = DEFAULT_EVENTS_MAX_AGE_S
    events_max_bytes: int = DEFAULT_EVENTS_MAX_BYTES
    max_value_bytes: int = 1024 * 1024


class OrgState:
    """Handles on one org's buckets and stream, opened (and created if missing) by :meth:`open`."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, org: str, stations: KeyValue, agents: KeyValue,
                 work: KeyValue, presence_ttl_s: float) -> None:
        self.js = js
        #: The hot path's requests (work record writes, assignments) on this connection.
        self.requests = Requests(nc)
        self.org = org
        self.stations = stations
        self.agents = agents
        self.work = work
        self.presence_ttl_s = presence_ttl_s

    @classmethod
    async def open(cls, nc: NatsClient, org: str, limits: StateLimits | None = None,
                   *, create: bool = True) -> OrgState:
        limits = limits or StateLimits()
        js = nc.jetstream()
        stations = await _bucket(js, subjects.bucket(org, "stations"), create, history=1,
                                 ttl=limits.presence_ttl_s, max_value_size=64 * 1024)
        agents = await _bucket(js, subjects.bucket(org, "agents"), create, history=5,
                               max_value_size=limits.max_value_bytes)
        src, dest = subjects.work_record_republish(org)
        work = await _bucket(js, subjects.bucket(org, "work"), create, history=8,
                             max_value_size=limits.max_value_bytes, republish=RePublish(src=src, dest=dest))
        if create:
            await _stream(js, subjects.events_stream(org), [subjects.events_all(org)],
                          limits.events_max_age_s, limits.events_max_bytes)
        status = await stations.status()
        ttl = status.ttl or limits.presence_ttl_s
        return cls(nc, js, org, stations, agents, work, presence_ttl_s=ttl)


async def _bucket(js: JetStreamContext, name: str, create: bool, *, republish: RePublish | None = None,
                  **config: Any) -> KeyValue:
    try:
        kv = await js.key_value(name)
    except BucketNotFoundError:
        if not create:
            raise
    else:
        return await _upgrade(js, name, kv, republish) if create else kv
    try:
        # Direct get: a read is one plain request answered from the stream, instead of the JSON stream API
        # (base64 and an email-header parser in nats-py): a third of the CPU of every record read.
        return await js.create_key_value(KeyValueConfig(bucket=name, storage=StorageType.FILE, direct=True,
                                                        republish=republish, **config))
    except BadRequestError:
        # Another process created it between our lookup and our create, possibly with other settings.
        return await js.key_value(name)


async def _upgrade(js: JetStreamContext, name: str, kv: KeyValue, republish: RePublish | None) -> KeyValue:
    """Give a bucket created by an older version direct get and its republish mapping (nats-py, unlike the Go
    client, does not turn on direct get by itself)."""
    try:
        info = await js.stream_info(f"KV_{name}")
        cfg = info.config
        wanted_republish = republish is not None and (cfg.republish is None or cfg.republish.dest != republish.dest)
        if cfg.allow_direct and not wanted_republish:
            return kv
        cfg.allow_direct = True
        if wanted_republish:
            cfg.republish = republish
        await js.update_stream(cfg)
        return await js.key_value(name)
    except Exception as exc:  # no permission to update streams: keep what the bucket has
        log.info("bucket %s: could not enable direct get / republish: %s", name, exc)
        return kv


async def _stream(js: JetStreamContext, name: str, subjects_: list[str], max_age_s: float, max_bytes: int) -> None:
    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    with contextlib.suppress(BadRequestError):
        await js.add_stream(StreamConfig(name=name, subjects=subjects_, max_age=max_age_s, max_bytes=max_bytes,
                                         storage=StorageType.FILE))


@dataclass(frozen=True)
class KvItem:
    key: str
    value: bytes
    revision: int


async def read_all(kv: KeyValue, timeout_s: float = 5.0) -> list[KvItem]:
    """Every live key with its value and revision, read through one ordered consumer (no N+1 gets)."""
    items = []
    watcher = await kv.watchall(ignore_deletes=True)
    try:
        while True:
            entry = await watcher.updates(timeout=timeout_s)
            if entry is None:
                break
            if entry.value is not None:
                items.append(KvItem(entry.key, entry.value, entry.revision or 0))
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return items


EntryHandler = Callable[[Any, bool], Awaitable[None]]


async def follow(kv: KeyValue, on_entry: EntryHandler, *, what: str,
                 on_snapshot: Callable[[set[str]], Awaitable[None]] | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
    """Follow every key of a bucket, forever: ``on_entry(entry, initial)`` for the current values (initial=True)
    and then every change; ``on_snapshot(keys seen)`` once the current values are delivered. Any failure rebuilds
    the watch with backoff (nats-py's ordered consumers do not reliably survive a server restart), and a fresh
    watch re-delivers every current value, so handlers must be idempotent. Cancel the task to stop."""
    delay = 0.2
    task = asyncio.current_task()
    while True:
        try:
            watcher = await kv.watchall()
            seen: set[str] = set()
            initial = True
            try:
                while True:
                    try:
                        entry = await watcher.updates(timeout=60)
                    except nats.errors.TimeoutError:
                        continue
                    finally:
                        # Python 3.11's wait_for drops a cancellation that lands as an update arrives: without
                        # this check a stop would wait for the next update, or forever on a quiet bucket.
                        if task is not None and task.cancelling():
                            raise asyncio.CancelledError
                    if entry is None:
                        if initial:
                            initial = False
                            delay = 0.2
                            if on_snapshot is not None:
                                await on_snapshot(seen)
                        continue
                    if initial:
                        seen.add(entry.key)
                    await on_entry(entry, initial)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if on_failure is not None:
                on_failure()
            log.warning("%s: watch failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

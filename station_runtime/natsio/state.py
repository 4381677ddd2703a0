"""The org's JetStream state: KV buckets ``stations``, ``agents``, ``work``, the ``events`` and ``journal``
streams and the results object store, each with a bound (:class:`StateLimits`).

Buckets are created on first use by whoever gets there first (a station, ``lattice up``, the operator); creating
an existing bucket with the same config is a no-op, so concurrent starters do not race. Every bucket keeps one
revision per key: the current state is what the lattice needs (the events stream is the history), and listings
read the stream (:mod:`.listing`), so a superseded revision would only cost space and reading time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RePublish,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ..contract import subjects
from ..errors import AccountLimitError, StateLayoutError
from .inbox import Inbox
from .limits import explain_limit
from .listing import KvItem, Listing, deletion, list_bucket
from .requests import Requests
from .retry import NATS_FAILURES

log = logging.getLogger(__name__)

#: A station's registry entry vanishes this long after its last heartbeat (3 missed beats at the default 2 s).
DEFAULT_PRESENCE_TTL_S: Final = 6.0
DEFAULT_EVENTS_MAX_AGE_S: Final = 7 * 24 * 3600.0
DEFAULT_EVENTS_MAX_BYTES: Final = 256 * 1024 * 1024


MIB: Final = 1024 * 1024
#: The setting that says on how many servers each store is kept (see ``StateLimits.replicas``).
REPLICAS_ENV: Final = "LATTICE_STATE_REPLICAS"
#: JetStream's own bound on a stream's replicas.
MAX_REPLICAS: Final = 5
#: The work bucket's metadata key holding the org's retention of finished work, in seconds.
RETENTION_KEY: Final = "lattice.work_retention_s"
#: How long the marker the server leaves when a finished record expires is kept (watchers see the deletion).
TTL_MARKER_S: Final = 60.0
#: A large result outlives its record's retention by this much: a reader of a record just before it expires can
#: still load its result.
RESULTS_TTL_MARGIN_S: Final = 3600.0


@dataclass(frozen=True)
class StateLimits:
    """The bound of every store an org has. A full work, agents or results store refuses writes (the writer gets
    a :class:`~station_runtime.errors.StoreFullError` naming the store); the events stream drops its oldest
    events instead (it is the audit log, not the truth); presence records expire by themselves."""

    #: A station's registry entry vanishes this long after its last heartbeat.
    presence_ttl_s: float = DEFAULT_PRESENCE_TTL_S
    events_max_age_s: float = DEFAULT_EVENTS_MAX_AGE_S
    events_max_bytes: int = DEFAULT_EVENTS_MAX_BYTES
    #: The largest record (work records carry their input and an inline result of up to 64 KiB).
    max_value_bytes: int = MIB
    #: Work records, live and finished: a typical record is 1-3 KiB, one with a 64 KiB inline result about 70 KiB.
    work_max_bytes: int = 512 * MIB
    #: A finished record is kept this long, then the server deletes it (a per-message TTL set with the write that
    #: finished it): nobody has to track history to purge it. Written into the work bucket's metadata when the
    #: bucket is created; everyone who opens the bucket reads it from there.
    work_retention_s: float = 24 * 3600.0
    #: Agent definitions (about 1 KiB each; at most ``max_value_bytes``).
    agents_max_bytes: int = 16 * MIB
    #: ToolServers stored by ``lattice apply`` (about 1 KiB each).
    toolservers_max_bytes: int = 4 * MIB
    #: Presence records (about 1 KiB per station; they expire by themselves).
    stations_max_bytes: int = 8 * MIB
    #: Results larger than a record holds (up to 32 MiB each); each lives for the retention and an hour more.
    results_max_bytes: int = 1024 * MIB
    #: Journals of agent runs, all together (a full journal refuses appends: the run fails with the reason).
    journal_max_bytes: int = 512 * MIB
    #: Entries of one run's journal (a turn is one, a tool call two): the server refuses more.
    journal_max_entries_per_run: int = 10_000
    #: Bytes of one run's journal, large entries in the object store included (the station keeps count).
    journal_max_run_bytes: int = 64 * MIB
    #: A journal outlives its run by the work's retention (the controller deletes it with the record); this is
    #: the stream's own bound on any entry, for journals whose record went while no controller ran.
    journal_max_age_s: float = 30 * 24 * 3600.0
    #: How many servers keep each store (3 on a NATS cluster: one may die, or restart, and nothing stops). None:
    #: stores are created with 1 and existing ones are left as they are, so that a process started without the
    #: setting never shrinks what an administrator set. Set (``LATTICE_STATE_REPLICAS``), the creator of the
    #: org's state also moves existing stores to it (an R1 lattice becomes R3 when its cluster grows).
    replicas: int | None = None

    def __post_init__(self) -> None:
        if self.replicas is not None and not 1 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"{REPLICAS_ENV}={self.replicas}: JetStream keeps a store on 1 to {MAX_REPLICAS} "
                             "servers (3 on a three-node cluster)")

    @classmethod
    def from_env(cls, **overrides: Any) -> StateLimits:
        """The defaults, with the replicas ``LATTICE_STATE_REPLICAS`` asks for; ``overrides`` win."""
        raw = os.environ.get(REPLICAS_ENV, "").strip()
        if raw and "replicas" not in overrides:
            try:
                overrides["replicas"] = int(raw)
            except ValueError:
                raise ValueError(f"{REPLICAS_ENV}={raw!r} is not a number of servers: give 1, 3 or 5") from None
        return cls(**overrides)

    @property
    def create_replicas(self) -> int:
        return self.replicas or 1

    def total_bytes(self) -> int:
        """What one org may take on disk at most: an embedded server's ``max_file_store`` must hold it."""
        return (self.work_max_bytes + self.agents_max_bytes + self.stations_max_bytes + self.results_max_bytes
                + self.events_max_bytes + self.toolservers_max_bytes + self.journal_max_bytes)


class OrgState:
    """Handles on one org's buckets and stream, opened (and created if missing) by :meth:`open`."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, org: str, stations: KeyValue, agents: KeyValue,
                 work: KeyValue, presence_ttl_s: float, limits: StateLimits | None = None,
                 work_retention_s: float | None = None) -> None:
        self.nc = nc
        self.js = js
        self.limits = limits or StateLimits()
        #: How long finished work is kept, as the org's work bucket says (else the limits' default).
        self.work_retention_s = work_retention_s or self.limits.work_retention_s
        #: The connection's reply inbox: requests, bids and batch reads all come back through it.
        self.inbox = Inbox(nc)
        #: The hot path's requests (work record writes, assignments) on this connection.
        self.requests = Requests(self.inbox)
        self.org = org
        self.stations = stations
        self.agents = agents
        self.work = work
        self.presence_ttl_s = presence_ttl_s

        self._results: ObjectStore | None = None
        #: How stores are made (set by :meth:`open`; a hand-built state creates R1 stores and moves none).
        self._layout = _Layout(js, org, None, self.limits.create_replicas)
        self._tool_servers: KeyValue | None = None

    async def list(self, kind: subjects.Bucket) -> list[KvItem]:
        """Every live key of one of the org's buckets, exactly, leaving no consumer behind."""
        return (await list_bucket(self.inbox, subjects.bucket(self.org, kind))).items

    async def follow(self, kind: subjects.Bucket, on_entry: EntryHandler, *, what: str,
                     on_snapshot: Callable[[set[str]], Awaitable[None]] | None = None,
                     on_failure: Callable[[], None] | None = None) -> None:
        """Follow one of the org's buckets (see :func:`follow`)."""
        await follow(self.js, self.inbox, subjects.bucket(self.org, kind), on_entry, what=what,
                     on_snapshot=on_snapshot, on_failure=on_failure)

    async def follow_published(self, kind: subjects.Bucket, subject: str, on_entry: EntryHandler, *, what: str,
                               on_snapshot: Callable[[set[str]], Awaitable[None]] | None = None) -> None:
        """Follow one of the org's buckets through its republish mapping (see :func:`follow_published`)."""
        await follow_published(self.nc, self.inbox, subjects.bucket(self.org, kind), subject, on_entry, what=what,
                               on_snapshot=on_snapshot)

    async def results(self) -> ObjectStore:
        """The org's object store for large results, created (bounded) on first use if it is missing."""
        if self._results is None:
            name = subjects.results_bucket(self.org)
            layout = self._layout
            try:
                self._results = await self.js.object_store(name)
            except (BucketNotFoundError, NotFoundError):
                try:
                    self._results = await self.js.create_object_store(name, ObjectStoreConfig(
                        max_bytes=self.limits.results_max_bytes, storage=StorageType.FILE,
                        ttl=self.work_retention_s + RESULTS_TTL_MARGIN_S, replicas=layout.create_replicas))
                except BadRequestError:  # created by someone else meanwhile
                    self._results = await self.js.object_store(name)
                except nats.js.errors.APIError as exc:
                    raise layout.refusal(f"object store {name}", layout.create_replicas, exc) or exc from exc
            else:
                if layout.replicas is not None:
                    stream = subjects.object_stream(name)
                    await layout.replicate(f"object store {name}", (await self.js.stream_info(stream)).config)
        return self._results

    async def tool_servers(self) -> KeyValue:
        """The org's ToolServers bucket (admin only), created (bounded) on first use if it is missing."""
        if self._tool_servers is None:
            self._tool_servers = await self._layout.bucket(subjects.bucket(self.org, "toolservers"), True,
                                                           max_value_size=self.limits.max_value_bytes,
                                                           max_bytes=self.limits.toolservers_max_bytes)
        return self._tool_servers

    @classmethod
    async def open(cls, nc: NatsClient, org: str, limits: StateLimits | None = None,
                   *, create: bool = True) -> OrgState:
        """The org's state, its buckets and streams created (``create``, the admin) or bound. Raises
        :class:`AccountLimitError` naming the setting when the org's account cannot hold them."""
        try:
            return await cls._open(nc, org, limits, create=create)
        except nats.js.errors.APIError as exc:
            if (limit := explain_limit(str(exc.description or ""))) is not None:
                raise AccountLimitError(f"org {org}: its state cannot be created: {limit}") from exc
            raise

    @classmethod
    async def _open(cls, nc: NatsClient, org: str, limits: StateLimits | None, *, create: bool) -> OrgState:
        limits = limits or StateLimits.from_env()
        js = nc.jetstream()
        layout = _Layout(js, org, limits.replicas if create else None, limits.create_replicas)
        stations = await layout.bucket(subjects.bucket(org, "stations"), create, ttl=limits.presence_ttl_s,
                                       max_value_size=64 * 1024, max_bytes=limits.stations_max_bytes)
        agent_src, agent_dest = subjects.agent_republish(org)
        agents = await layout.bucket(subjects.bucket(org, "agents"), create, max_value_size=limits.max_value_bytes,
                                     max_bytes=limits.agents_max_bytes,
                                     republish=RePublish(src=agent_src, dest=agent_dest))
        src, dest = subjects.work_record_republish(org)
        work = await layout.bucket(subjects.bucket(org, "work"), create, max_value_size=limits.max_value_bytes,
                                   max_bytes=limits.work_max_bytes, republish=RePublish(src=src, dest=dest),
                                   limit_marker_ttl=TTL_MARKER_S,
                                   metadata={RETENTION_KEY: str(limits.work_retention_s)})
        retention = await _retention(js, subjects.bucket(org, "work"))
        if create:
            await layout.stream(StreamConfig(name=subjects.events_stream(org), subjects=[subjects.events_all(org)],
                                             max_age=limits.events_max_age_s, max_bytes=limits.events_max_bytes,
                                             storage=StorageType.FILE))
            # The journal: read by direct get (a run's entries by subject), each run's entries bounded by the
            # server (discard new per subject: an append past the bound is refused, never an old entry dropped).
            await layout.stream(StreamConfig(
                name=subjects.journal_stream(org), subjects=[subjects.journal_all(org)], storage=StorageType.FILE,
                max_age=limits.journal_max_age_s, max_bytes=limits.journal_max_bytes, discard=DiscardPolicy.NEW,
                max_msgs_per_subject=limits.journal_max_entries_per_run, discard_new_per_subject=True,
                max_msg_size=limits.max_value_bytes, allow_direct=True))
        status = await stations.status()
        ttl = status.ttl or limits.presence_ttl_s
        state = cls(nc, js, org, stations, agents, work, presence_ttl_s=ttl, limits=limits,
                    work_retention_s=retention)
        state._layout = layout
        return state


#: What the server says when a stream cannot have the replicas asked for (not clustered; too few servers).
_PLACEMENT_ERRORS: Final = ("insufficient resources", "replicas > 1 not supported", "no suitable peers")


@dataclass
class _Layout:
    """How the org's stores are made and kept: created with ``create_replicas``, and moved to ``replicas`` when
    that is set (None: existing stores are left as they are)."""

    js: JetStreamContext
    org: str
    replicas: int | None
    create_replicas: int

    def refusal(self, name: str, wanted: int, exc: nats.js.errors.APIError) -> StateLayoutError | None:
        description = str(exc.description or exc)
        if not any(p in description.lower() for p in _PLACEMENT_ERRORS):
            return None
        return StateLayoutError(
            f"org {self.org}: {name} cannot be kept on {wanted} NATS servers ({description}): the cluster has "
            f"fewer servers with JetStream. Set {REPLICAS_ENV} (the chart's nats.cluster.replicas) to at most the "
            "number of servers, or add servers")

    async def bucket(self, name: str, create: bool, *, republish: RePublish | None = None, max_bytes: int,
                     metadata: dict[str, str] | None = None, **config: Any) -> KeyValue:
        try:
            kv = await self.js.key_value(name)
        except BucketNotFoundError:
            if not create:
                raise
        else:
            return await self.upgrade(name, kv, republish, max_bytes) if create else kv
        try:
            # Direct get: a read is one plain request answered from the stream, instead of the JSON stream API
            # (base64 and an email-header parser in nats-py): a third of the CPU of every record read.
            kv = await self.js.create_key_value(KeyValueConfig(
                bucket=name, storage=StorageType.FILE, direct=True, history=1, republish=republish,
                max_bytes=max_bytes, replicas=self.create_replicas, **config))
        except BadRequestError:
            # Another process created it between our lookup and our create, possibly with other settings.
            return await self.js.key_value(name)
        except nats.js.errors.APIError as exc:
            raise self.refusal(f"bucket {name}", self.create_replicas, exc) or exc from exc
        if metadata:
            # nats-py's KV config has no metadata: the creator adds it at once (before anyone needs it).
            info = await self.js.stream_info(subjects.kv_stream(name))
            info.config.metadata = {**(info.config.metadata or {}), **metadata}
            await self.js.update_stream(info.config)
        return kv

    async def upgrade(self, name: str, kv: KeyValue, republish: RePublish | None, max_bytes: int) -> KeyValue:
        """Bring a bucket created by an older version up to date: direct get and the republish mapping (nats-py,
        unlike the Go client, does not turn on direct get by itself), one revision per key, a bound, and the
        replicas the lattice is set to."""
        stream = subjects.kv_stream(name)
        try:
            info = await self.js.stream_info(stream)
            cfg = info.config
            wanted_republish = republish is not None and (cfg.republish is None
                                                          or cfg.republish.dest != republish.dest)
            unbounded = cfg.max_bytes is None or cfg.max_bytes < 0
            moved = self.replicas is not None and cfg.num_replicas != self.replicas
            if cfg.allow_direct and not wanted_republish and cfg.max_msgs_per_subject == 1 and not unbounded \
                    and not moved:
                return kv
            cfg.allow_direct = True
            cfg.max_msgs_per_subject = 1
            if unbounded:
                cfg.max_bytes = max_bytes
            if wanted_republish:
                cfg.republish = republish
            await self._update(f"bucket {name}", cfg, info.config.num_replicas)
            return await self.js.key_value(name)
        except (nats.js.errors.APIError, nats.errors.TimeoutError) as exc:  # not allowed to update streams: keep it
            log.info("bucket %s: could not bring its settings up to date: %s", name, exc)
            return kv

    async def stream(self, config: StreamConfig) -> None:
        assert config.name is not None
        try:
            info = await self.js.stream_info(config.name)
        except NotFoundError:
            pass
        else:
            await self.replicate(f"stream {config.name}", info.config)
            return
        config.num_replicas = self.create_replicas
        try:
            await self.js.add_stream(config)
        except BadRequestError:  # created by someone else meanwhile
            pass
        except nats.js.errors.APIError as exc:
            raise self.refusal(f"stream {config.name}", self.create_replicas, exc) or exc from exc

    async def replicate(self, what: str, cfg: StreamConfig) -> None:
        """Move an existing store to the replicas the lattice is set to (nothing when unset or already so)."""
        if self.replicas is not None and cfg.num_replicas != self.replicas:
            await self._update(what, cfg, cfg.num_replicas)

    async def _update(self, what: str, cfg: StreamConfig, had: int | None) -> None:
        if self.replicas is not None and had != self.replicas:
            cfg.num_replicas = self.replicas
            log.warning("org %s: %s moves from %s to %d replicas (%s)", self.org, what, had or 1, self.replicas,
                        REPLICAS_ENV)
        try:
            await self.js.update_stream(cfg)
        except nats.js.errors.APIError as exc:
            if (refused := self.refusal(what, cfg.num_replicas or 1, exc)) is not None:
                raise refused from exc
            raise


async def _retention(js: JetStreamContext, name: str) -> float | None:
    """The retention the org's work bucket was created with (None: an older bucket, or not readable)."""
    try:
        info = await js.stream_info(subjects.kv_stream(name))
    except (nats.js.errors.APIError, nats.errors.TimeoutError):
        return None
    raw = (info.config.metadata or {}).get(RETENTION_KEY)
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


EntryHandler = Callable[[KvItem, bool], Awaitable[None]]
#: The server drops a watch's consumer this long after its subscriber went away (a process killed, a connection
#: lost): nothing is left behind for long. A live watch is kept alive by nats-py's heartbeats.
WATCH_INACTIVE_S: Final = 60.0


async def follow(js: JetStreamContext, inbox: Inbox, bucket: str, on_entry: EntryHandler, *, what: str,
                 on_snapshot: Callable[[set[str]], Awaitable[None]] | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
    """Follow every key of a bucket, forever: ``on_entry(entry, initial)`` for the current values (initial=True)
    and then every change (deletions with ``operation`` set); ``on_snapshot(keys seen)`` once the current values
    are delivered.

    The snapshot is an exact listing (:mod:`.listing`), and the watch an ordered consumer that starts right after
    the sequence the listing is exact at: nothing is missed between the two and nothing comes twice. (nats-py's
    KV watch decides where its snapshot ends from consumer info that can say "nothing pending" while the entries
    are already on their way: a directory opened at that moment looked empty, and work was called
    unschedulable with "no station registered".) Any failure rebuilds the whole with backoff (nats-py's ordered
    consumers do not reliably survive a server restart), and a fresh snapshot re-delivers every current value,
    so handlers must be idempotent. Cancel the task to stop."""
    prefix = f"$KV.{bucket}."
    task = asyncio.current_task()

    def cancelled() -> None:
        # nats-py's requests wait with Python 3.11's wait_for, which can drop a cancellation that lands as the
        # answer arrives: without this check a stop could wait for ever on a quiet bucket.
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    async def once(healthy: Callable[[], None]) -> None:
        sub = None
        try:
            listing = await _snapshot(inbox, bucket, on_entry, on_snapshot)
            healthy()
            queue: asyncio.Queue[Msg] = asyncio.Queue()
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=listing.last_sequence + 1, inactive_threshold=WATCH_INACTIVE_S)
            sub = await js.subscribe(subjects.kv_all(bucket), stream=subjects.kv_stream(bucket), cb=queue.put,
                                     ordered_consumer=True, config=config)
            cancelled()
            while True:
                msg = await queue.get()  # a quiet bucket sends nothing: nats-py answers the server's heartbeats
                key = msg.subject[len(prefix):]
                if not key:
                    continue
                await on_entry(KvItem(key, msg.data, msg.metadata.sequence.stream, deletion(msg.headers)), False)
        finally:
            await _unsubscribe(sub)

    await _forever(once, what, on_failure)


async def follow_published(nc: NatsClient, inbox: Inbox, bucket: str, subject: str, on_entry: EntryHandler, *,
                           what: str, on_snapshot: Callable[[set[str]], Awaitable[None]] | None = None) -> None:
    """Like :func:`follow`, without a JetStream consumer: the server republishes every change of the bucket on
    ``subject`` (its republish mapping), which is subscribed to *before* the exact listing is read, so a change is
    either in the listing or arrives after it (a republished copy at or below the listing's sequence is skipped:
    nothing twice, nothing missed). What needs no consumer needs no right to create one (see
    ``subjects.agent_republish``). A plain subscription has no redelivery: a failure (the subscription's own
    error, a handler's bug) rebuilds the whole from a fresh listing, with backoff, as a reconnect does."""
    prefix = f"$KV.{bucket}."

    async def once(healthy: Callable[[], None]) -> None:
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await nc.subscribe(subject, cb=queue.put)
        try:
            await nc.flush()  # the server has the subscription before the listing is read
            listing = await _snapshot(inbox, bucket, on_entry, on_snapshot)
            healthy()
            while True:
                msg = await queue.get()
                headers = msg.headers or {}
                original, seq = headers.get("Nats-Subject", ""), headers.get("Nats-Sequence", "")
                if not original.startswith(prefix) or not seq.isdigit():
                    log.debug("%s: ignored a message without republish headers on %s", what, msg.subject)
                    continue
                if int(seq) <= listing.last_sequence:
                    continue  # in the listing already
                await on_entry(KvItem(original[len(prefix):], msg.data, int(seq), deletion(headers)), False)
        finally:
            await _unsubscribe(sub)

    await _forever(once, what, None)


async def _snapshot(inbox: Inbox, bucket: str, on_entry: EntryHandler,
                    on_snapshot: Callable[[set[str]], Awaitable[None]] | None) -> Listing:
    listing = await list_bucket(inbox, bucket)
    for item in listing.items:
        await on_entry(item, True)
    if on_snapshot is not None:
        await on_snapshot({item.key for item in listing.items})
    return listing


async def _unsubscribe(sub: Subscription | None) -> None:
    if sub is not None:
        with contextlib.suppress(*NATS_FAILURES):
            await sub.unsubscribe()


async def _forever(once: Callable[[Callable[[], None]], Awaitable[None]], what: str,
                   on_failure: Callable[[], None] | None) -> None:
    """Run a watch again and again with backoff: any failure (nats-py's, the socket's, a handler's bug) rebuilds
    it, since a watch is what keeps a directory or an index alive and must never end by itself. ``once`` calls
    the function it is given when it is healthy again (its snapshot is delivered): that resets the backoff."""
    delay = 0.2

    def healthy() -> None:
        nonlocal delay
        delay = 0.2

    while True:
        try:
            await once(healthy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if on_failure is not None:
                on_failure()
            log.warning("%s: watch failed (%r); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

"""The work store: work records in the org's ``work`` KV bucket, every change a compare-and-set.

``mutate`` is the one way to change a record: read (or take the caller's copy), apply a pure function, write with
``update(last=revision)``; on a conflict re-read and re-apply. The function sees the freshest record and may
decline (return None), so two writers (two witnesses, a station and a witness) can never both win.
Large results go to the org's object store, the record keeps a reference.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.object_store import ObjectStore
from pydantic import TypeAdapter, ValidationError

from ..contract import subjects
from ..contract.codec import decode, encode
from ..contract.errors import DecodeError
from ..contract.events import Category
from ..contract.messages import ErrorCode, Payload, WorkError, WorkPhase, WorkRecord, utcnow
from ..contract.specs import WorkItemSpec
from ..contract.subjects import Header
from ..errors import ConflictError, ResultTooLarge
from ..natsio.events import EventPublisher
from ..natsio.listing import KvItem
from ..natsio.requests import direct_last, kv_write
from ..natsio.state import OrgState

log = logging.getLogger(__name__)

#: Results up to this size live in the record; larger ones go to the object store.
MAX_INLINE_RESULT_BYTES: Final = 64 * 1024
#: Results larger than this are refused (the work fails with a clear error).
MAX_RESULT_BYTES: Final = 32 * 1024 * 1024


@dataclass(frozen=True)
class Versioned:
    record: WorkRecord
    revision: int


Mutation = Callable[[WorkRecord], WorkRecord | None]


#: A finished run's event names at most this many of the children it delegated (its record has them all).
MAX_EVENT_CHILDREN = 50


class WorkStore:
    def __init__(self, state: OrgState, events: EventPublisher | None = None) -> None:
        self.state = state
        self.events = events
        self._bucket = subjects.bucket(state.org, "work")
        self._stream = subjects.kv_stream(self._bucket)
        #: The highest revision of the bucket this store has seen: reads ask replicas to be at least there.
        self.floor = 0
        self._results_bucket = subjects.results_bucket(state.org)

    async def create(self, record: WorkRecord) -> tuple[Versioned, bool]:
        """Create the record unless the id exists; returns the stored version and whether it was created here.
        Idempotent: submitting the same work id twice yields the first record."""
        data = encode(record)
        last = 0
        for _ in range(3):
            try:
                revision = await kv_write(self.state.requests, self._bucket, record.work_id, data, last=last,
                                          ttl_s=self._ttl(record))
                self.saw(revision)
                return Versioned(record, revision), True
            except KeyWrongLastSequenceError:
                existing, last = await self._last(record.work_id)
                if existing is not None:
                    return existing, False
                # Deleted (a tombstone is its last revision): the new record is written over it.
        raise ConflictError(f"work {record.work_id!r} was created and deleted again while this submit ran: "
                            "submit it again")

    async def submit(self, record: WorkRecord, on_created: Callable[[Versioned], Awaitable[None]] | None = None,
                     ) -> tuple[Versioned, bool]:
        """Create new work: idempotent on its id (the same spec again returns the first record, another spec
        under that id raises :class:`ConflictError`); ``on_created`` runs once it exists and before any station
        can have it (a waiter subscribes there); the ``submitted`` event is recorded."""
        versioned, created = await self.create(record)
        if not created:
            if versioned.record.spec != record.spec:
                raise ConflictError(
                    f"work {record.work_id!r} exists with a different spec (phase {versioned.record.phase}): a "
                    "work id names one piece of work; submit the changed one under another id (or another name)")
            return versioned, False
        if on_created is not None:
            await on_created(versioned)
        await self.emit("work", "submitted", record)
        return versioned, True

    async def get(self, work_id: str) -> Versioned | None:
        """The record's latest version as far as this store has seen the bucket (never an older one: see
        :func:`~..natsio.requests.direct_last`); None if it has none."""
        return (await self._last(work_id))[0]

    async def _last(self, work_id: str) -> tuple[Versioned | None, int]:
        """One read of the key: its record (None if it has none, or a delete marker) and its last revision (0:
        none), which a create over a delete marker compares against."""
        msg = await direct_last(self.state.requests, self._stream, subjects.kv_key(self._bucket, work_id),
                                min_seq=self.floor)
        if msg is None:
            return None, 0
        headers = msg.headers or {}
        revision = int(headers.get(Header.SEQUENCE, "0"))
        self.saw(revision)
        if not msg.data or headers.get(Header.KV_OPERATION) in ("DEL", "PURGE"):
            return None, revision
        return Versioned(decode(msg.data, WorkRecord), revision), revision

    def saw(self, revision: int) -> None:
        """Note a revision of the bucket seen (read, written, pushed): later reads are at least that recent."""
        if revision > self.floor:
            self.floor = revision

    def pushed(self, headers: dict[str, str] | None, data: bytes) -> Versioned | None:
        """A record version the server republished on ``work.{id}.record`` once it was stored; None for a
        delete or anything unreadable (the caller reads the record instead)."""
        if not headers or headers.get("KV-Operation") in ("DEL", "PURGE") or not data:
            return None
        try:
            versioned = Versioned(decode(data, WorkRecord), int(headers.get("Nats-Sequence", "0")))
        except (DecodeError, ValueError):
            return None
        self.saw(versioned.revision)
        return versioned

    async def write(self, new: WorkRecord, revision: int) -> int:
        """CAS one record; raises KeyWrongLastSequenceError if ``revision`` is no longer the latest. The write
        that finishes a record carries the org's retention as its TTL: the server deletes it then."""
        written = await kv_write(self.state.requests, self._bucket, new.work_id, encode(new), last=revision,
                                 ttl_s=self._ttl(new))
        self.saw(written)
        return written

    def _ttl(self, record: WorkRecord) -> float | None:
        return self.state.work_retention_s if record.phase.terminal else None

    async def mutate(self, work_id: str, fn: Mutation, *, current: Versioned | None = None,
                     attempts: int = 8) -> Versioned | None:
        """Apply ``fn`` with compare-and-set until it sticks; None if the record is gone or ``fn`` declines."""
        for _ in range(attempts):
            if current is None:
                current = await self.get(work_id)
                if current is None:
                    return None
            new = fn(current.record)
            if new is None:
                return None
            try:
                revision = await self.write(new, current.revision)
                return Versioned(new, revision)
            except KeyWrongLastSequenceError:
                current = None
        raise RuntimeError(f"work {work_id}: {attempts} compare-and-set conflicts in a row")

    async def all(self) -> list[Versioned]:
        out = []
        for item in await self.state.list("work"):
            versioned = self._parse(item)
            if versioned is not None:
                out.append(versioned)
        return out

    @staticmethod
    def _parse(item: KvItem) -> Versioned | None:
        try:
            return Versioned(decode(item.value, WorkRecord), item.revision)
        except DecodeError as exc:
            log.warning("skipping malformed work record %r: %s", item.key, exc)
            return None

    async def note(self, category: Category, type_: str, *, subject: str, **data: object) -> None:
        """An event that is not about a stored version of a record (a station lost, a record purged)."""
        if self.events is not None:
            await self.events.emit(category, type_, subject=subject, data=data)

    async def quarantine(self, work_id: str, revision: int, data: bytes, why: str) -> Versioned | None:
        """Replace an unreadable record (CAS on ``revision``) by a Failed one that says why; its bytes are kept in
        the results store (``quarantine/{work}/{revision}``). None if the record changed meanwhile."""
        name = f"quarantine/{work_id}/{revision}"
        await (await self._object_store()).put(name, data[:MAX_RESULT_BYTES])
        message = (f"the stored record could not be read ({why[:300]}); it was quarantined, its bytes are kept in "
                   f"{self._results_bucket} as {name}")
        now = utcnow()
        record = WorkRecord(org=self.state.org, work_id=work_id, spec=salvage_spec(data), phase=WorkPhase.FAILED,
                            reason=message, error=WorkError(code=ErrorCode.BAD_REQUEST, message=message),
                            created_at=now, updated_at=now, finished_at=now)
        try:
            stored = Versioned(record, await self.write(record, revision))
        except KeyWrongLastSequenceError:
            return None
        await self.emit("work", "failed", record, quarantined=True)
        return stored

    async def emit(self, category: Category, type_: str, record: WorkRecord, **data: object) -> None:
        if self.events is not None:
            payload: dict[str, object] = {"phase": record.phase.value, "attempt": record.attempt,
                                          "station": record.station_id, "reason": record.reason}
            if record.parent_id is not None:
                payload["parent"] = record.parent_id
            if record.usage is not None and record.phase.terminal:
                payload["usage"] = record.usage.model_dump(exclude_defaults=True)
            if record.children and record.phase.terminal:
                payload["children"] = record.children[:MAX_EVENT_CHILDREN]
            payload.update(data)
            await self.events.emit(category, type_, subject=record.work_id, data=payload,
                                   traceparent=record.traceparent)

    # --- results -------------------------------------------------------------------------------------------

    async def _object_store(self) -> ObjectStore:
        return await self.state.results()

    async def store_result(self, work_id: str, attempt_id: str, result: Payload) -> tuple[Payload, str | None]:
        """``(inline result, None)`` or ``(None, reference)`` for a large one; raises ResultTooLarge. A large
        result is stored under its attempt (``{work}/{attempt}``): a superseded attempt that finishes late writes
        beside the accepted one, never over it."""
        data = encode_payload(result)
        if len(data) <= MAX_INLINE_RESULT_BYTES:
            return result, None
        if len(data) > MAX_RESULT_BYTES:
            raise ResultTooLarge(f"result of {len(data)} bytes exceeds the limit of {MAX_RESULT_BYTES} bytes")
        name = f"{work_id}/{attempt_id}"
        store = await self._object_store()
        await store.put(name, data)
        return None, f"obj://{self._results_bucket}/{name}"

    async def load_result(self, record: WorkRecord) -> Payload:
        """The result of finished work: inline, or read from the object store by its reference."""
        if record.result_ref is None:
            return record.result
        return await self.load_ref(record.result_ref)

    async def load_ref(self, ref: str) -> Payload:
        """A result kept in the object store, by its reference (``obj://{bucket}/{name}``)."""
        store = await self._object_store()
        obj = await store.get(self._object_name(ref))
        return _PAYLOAD.validate_json(obj.data or b"null")

    def _object_name(self, ref: str) -> str:
        prefix = f"obj://{self._results_bucket}/"
        if not ref.startswith(prefix):
            raise ValueError(f"result reference {ref!r} is not in this org's results store ({prefix}...)")
        return ref[len(prefix):]


_PAYLOAD: Final[TypeAdapter[Payload]] = TypeAdapter(Payload)


def encode_payload(value: Payload) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def salvage_spec(data: bytes) -> WorkItemSpec:
    """Pure: as much of an unreadable record's spec as still validates (fields that do not are dropped, so that
    their defaults apply), or a spec that names only its agent (``"unknown"`` if even that is unreadable)."""
    try:
        raw = json.loads(data)
        spec = dict(raw.get("spec") or {}) if isinstance(raw, dict) else {}
    except (ValueError, TypeError):
        spec = {}
    for _ in range(10):
        try:
            return WorkItemSpec.model_validate(spec)
        except ValidationError as exc:
            for error in exc.errors():
                _drop(spec, error["loc"])
    agent = spec.get("agent")
    try:
        return WorkItemSpec(agent=agent if isinstance(agent, str) else "unknown")
    except ValidationError:
        return WorkItemSpec(agent="unknown")


def _drop(tree: dict[str, Any], loc: tuple[int | str, ...]) -> None:
    """Remove what ``loc`` points at (a field, or a list item) from ``tree``, if it is there."""
    if not loc:
        return
    *path, leaf = loc
    node: Any = tree
    for part in path:
        found = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node))
        if not found:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(leaf, None)
    elif isinstance(node, list) and isinstance(leaf, int) and 0 <= leaf < len(node):
        node.pop(leaf)

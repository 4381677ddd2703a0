"""Exact listings of a KV bucket, read by batch direct get: no consumer is created, so none is left behind.

nats-py lists a bucket with an ordered consumer (``watchall``), and both ways that goes wrong were seen here: its
end-of-data marker can come before the entries (consumer info says nothing is pending while the entries are
already in the client's buffer, waiting for the watch to be set up), so a listing came back empty in 1-5 of 300
calls; and each listing left its consumer on the server until nats-py's five-minute inactivity threshold (a
witness listing every second kept ~300 alive, fatal under an account's consumer limit).

Here a listing is a batch direct get (``$JS.API.DIRECT.GET.<stream>`` with ``{"seq", "batch", "next_by_subj"}``,
nats-server 2.11+): the server sends the stream's messages on the bucket's subjects in order, then a ``204``
status message with how many remain; we page until none remain. Reading the stream rather than the "last per
key" index means a key's superseded revisions are read too (they are dropped, the last one wins), which is why
the lattice's buckets keep one revision per key. A listing is exact as of the moment it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.msg import Msg

from ..contract import subjects
from ..contract.subjects import Header, Status
from .inbox import Inbox, status

log = logging.getLogger(__name__)

#: Messages asked for per page, and the bytes a page may hold (the server stops a page at whichever comes first).
PAGE_MESSAGES: Final = 1000
PAGE_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True)
class KvItem:
    key: str
    value: bytes
    revision: int
    #: ``DEL`` or ``PURGE`` for a deletion (a watch delivers those; a listing leaves them out), else None.
    operation: str | None = None


@dataclass(frozen=True)
class Listing:
    """A bucket's live keys, and the stream sequence they are exact at: a watch that starts right after it (at
    ``last_sequence + 1``) sees every change since, and nothing twice."""

    items: list[KvItem]
    last_sequence: int


def deletion(headers: dict[str, str] | None) -> str | None:
    """``DEL``/``PURGE`` if a KV message is a deletion: a delete or purge, or the marker the server leaves when a
    message's TTL or the bucket's age limit removed the key (``Nats-Marker-Reason``)."""
    if not headers:
        return None
    if (op := headers.get(Header.KV_OPERATION)) in ("DEL", "PURGE"):
        return op
    if (reason := headers.get(Header.MARKER_REASON)) is not None:
        return "DEL" if reason == "Remove" else "PURGE"
    return None


class ListingError(RuntimeError):
    """The server answered a batch read with an error status."""


async def list_bucket(inbox: Inbox, bucket: str, *, timeout_s: float = 5.0) -> Listing:
    """Every live key of ``bucket`` with its value and revision, in revision order, and where they are exact."""
    stream, prefix = subjects.kv_stream(bucket), f"$KV.{bucket}."
    latest: dict[str, KvItem] = {}
    seq = 1
    while True:
        page, remaining, last = await _page(inbox, stream, subjects.kv_all(bucket), seq, timeout_s)
        for msg in page:
            headers = msg.headers or {}
            key = headers.get(Header.SUBJECT, "")[len(prefix):]
            if not key:
                continue
            if deletion(headers) is not None or not msg.data:
                latest.pop(key, None)
            else:
                latest[key] = KvItem(key, msg.data, int(headers.get(Header.SEQUENCE, "0")))
        if not remaining or last < seq:
            return Listing(sorted(latest.values(), key=lambda item: item.revision), max(last, seq - 1))
        seq = last + 1


async def read_subject(inbox: Inbox, stream: str, subject: str, *, limit: int,
                       timeout_s: float = 5.0) -> list[Msg]:
    """Every message of ``stream`` on ``subject`` (a filter), in order, at most ``limit`` (the caller's bound on
    what it holds; more raise :class:`ListingError`)."""
    messages: list[Msg] = []
    seq = 1
    while True:
        page, remaining, last = await _page(inbox, stream, subject, seq, timeout_s)
        messages.extend(page)
        if len(messages) > limit:
            raise ListingError(f"{stream} holds more than {limit} messages on {subject}")
        if not remaining or last < seq:
            return messages
        seq = last + 1


async def _page(inbox: Inbox, stream: str, subject_filter: str, seq: int,
                timeout_s: float) -> tuple[list[Msg], int, int]:
    """One page from ``seq``: its messages, how many remain after it, and the last sequence it held."""
    await inbox.start()
    key = inbox.new_key()
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    inbox.register(key, lambda msg, _: queue.put_nowait(msg))
    request = json.dumps({"seq": seq, "batch": PAGE_MESSAGES, "max_bytes": PAGE_BYTES,
                          "next_by_subj": subject_filter}).encode()
    messages: list[Msg] = []
    try:
        await inbox.publish(subjects.js_direct_get(stream), request, key)
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await queue.get()
                code = status(msg)
                if code is None:
                    messages.append(msg)
                    continue
                headers = msg.headers or {}
                if code == Status.END_OF_BATCH:
                    return messages, int(headers.get(Header.NUM_PENDING, "0")), \
                        int(headers.get(Header.LAST_SEQUENCE, "0"))
                if code == Status.NOT_FOUND:  # nothing (more) at or after seq
                    return messages, 0, seq - 1
                if code == Status.NO_RESPONDERS:
                    raise nats.errors.NoRespondersError
                raise ListingError(f"batch read of {stream} from {seq}: {code} "
                                   f"{headers.get(Header.DESCRIPTION, '')}".rstrip())
    except TimeoutError:
        raise nats.errors.TimeoutError from None
    finally:
        inbox.unregister(key)

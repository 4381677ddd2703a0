"""Request/reply and JetStream writes for the hot path, with less machinery per call than nats-py's.

nats-py's ``request`` draws a random token from the OS for each call (a syscall), builds a NUID, and waits with
``asyncio.wait_for``; its JetStream ``publish`` then parses the acknowledgement into a dataclass. On a two-core
machine a work item pays for that three times (record create, assignment, outcome write). Here the connection's
one :class:`~.inbox.Inbox` serves every request, keys come from a counter, the wait is an ``asyncio.timeout`` on
a plain future, and an acknowledgement is read for the two fields we need. Errors are nats-py's own, so callers
and :func:`..natsio.retry.is_transient` treat both paths alike.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from ..contract import subjects
from ..contract.subjects import Header, Status
from ..errors import StoreFullError
from ..telemetry import tracing
from .inbox import Inbox, status

#: JetStream's error codes for "the subject's last sequence is not the one expected" (a failed compare-and-set).
WRONG_LAST_SEQUENCE = (10071, 10164)
#: JetStream's error codes for a stream (a bucket) that refuses a write because it is at its bound: its bytes or
#: messages (10077), or a subject's messages with discard-new-per-subject (10077 as well on 2.11; kept a tuple).
STORE_FULL = (10077,)


class Requests:
    """One connection's requests, over its inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def request(self, subject: str, payload: bytes, *, timeout_s: float,
                      headers: dict[str, str] | None = None) -> Msg:
        """The reply; raises nats-py's ``TimeoutError`` or ``NoRespondersError`` like ``Client.request``."""
        inbox = self.inbox
        await inbox.start()
        key = inbox.new_key()
        reply: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        def answered(msg: Msg, _: str) -> None:
            if not reply.done():
                reply.set_result(msg)

        inbox.register(key, answered)
        try:
            await inbox.publish(subject, payload, key, headers=headers)
            async with asyncio.timeout(timeout_s):
                msg = await reply
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            inbox.unregister(key)
        if status(msg) == Status.NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg


async def kv_write(requests: Requests, bucket: str, key: str, value: bytes, *, last: int,
                   timeout_s: float = 5.0, ttl_s: float | None = None) -> int:
    """Write ``key`` if its latest revision is ``last`` (0: if it has none); the new revision. With ``ttl_s`` the
    server deletes this version that long after (nats-server 2.11+ message TTL). Raises
    ``KeyWrongLastSequenceError`` when the compare-and-set fails, like ``KeyValue.update``."""
    headers: dict[str, str] = {}
    if ttl_s is not None:
        headers[Header.TTL] = f"{max(int(ttl_s), 1)}s"
    return await js_append(requests, subjects.kv_key(bucket, key), value, last=last, store=bucket,
                           timeout_s=timeout_s, headers=headers)


async def js_append(requests: Requests, subject: str, value: bytes, *, last: int, store: str,
                    timeout_s: float = 5.0, headers: dict[str, str] | None = None) -> int:
    """Publish ``value`` to a stream's ``subject`` if the subject's last sequence is ``last`` (0: it has none);
    the message's stream sequence. Raises ``KeyWrongLastSequenceError`` when the compare-and-set fails and
    :class:`StoreFullError` (naming ``store``) when the stream is at its bound."""
    headers = {**(headers or {}), Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
    # Stored with the value (and republished with it): a write of a work record carries the writer's span.
    headers = tracing.headers(headers) or headers
    try:
        msg = await requests.request(subject, value, timeout_s=timeout_s, headers=headers)
    except nats.errors.NoRespondersError:
        raise nats.js.errors.NoStreamResponseError from None
    ack: dict[str, Any] = json.loads(msg.data)
    if (error := ack.get("error")) is not None:
        if error.get("err_code") in WRONG_LAST_SEQUENCE:
            raise nats.js.errors.KeyWrongLastSequenceError(description=error.get("description"))
        if error.get("err_code") in STORE_FULL:
            # Not transient (it is not retried for minutes) and not nats-py's 503 (which reads as "no server").
            raise StoreFullError(f"the org's store {store} is full ({error.get('description')}): finished work "
                                 "is deleted after its retention; raise the bound (StateLimits, the org's JetStream "
                                 "limits), shorten the retention, or cancel old work")
        raise nats.js.errors.APIError.from_error(error)
    return int(ack["seq"])


#: How often a read is asked again of the stream's replicas when the one that answered was behind.
LAGGING_RETRIES = 20


class LaggingReplica(nats.errors.TimeoutError):
    """Every replica that answered a read was behind the sequence it had to reach (a transient failure)."""


async def direct_last(requests: Requests, stream: str, subject: str, *, min_seq: int = 0,
                      timeout_s: float = 5.0) -> Msg | None:
    """The last message of ``subject`` in ``stream`` by direct get, or None when it has none. Any replica of a
    clustered stream may answer a direct get, a follower still catching up too (a restarted server): with
    ``min_seq`` (the highest sequence the reader has seen of the stream) such a replica refuses (412) instead of
    answering from the past, and the read is asked again. Reads are then monotonic: a record once seen never
    reads as missing or older. (nats-server 2.12+; an older server ignores the field.)"""
    request: dict[str, Any] = {"last_by_subj": subject}
    if min_seq > 0:
        request["min_last_seq"] = min_seq
    payload = json.dumps(request).encode()
    target = subjects.js_direct_get(stream)
    for attempt in range(LAGGING_RETRIES):
        msg = await requests.request(target, payload, timeout_s=timeout_s)
        code = status(msg)
        if code is None:
            return msg
        if code == Status.NOT_FOUND:
            return None
        if code != Status.MIN_LAST_SEQUENCE:
            description = (msg.headers or {}).get(Header.DESCRIPTION, "")
            raise nats.js.errors.APIError(code=int(code) if code.isdigit() else None, description=description)
        await asyncio.sleep(min(0.01 * 2 ** attempt, 0.25))
    raise LaggingReplica(f"{stream}: no replica had reached sequence {min_seq} after {LAGGING_RETRIES} reads")

"""Request/reply and JetStream writes for the hot path, with less machinery per call than nats-py's.

nats-py's ``request`` draws a random token from the OS for each call (a syscall), builds a NUID, and waits with
``asyncio.wait_for``; its JetStream ``publish`` then parses the acknowledgement into a dataclass. On a two-core
machine a work item pays for that three times (record create, assignment, outcome write). Here one wildcard
inbox subscription per connection serves every request, tokens come from a counter, the wait is an
``asyncio.timeout`` on a plain future, and an acknowledgement is read for the two fields we need. Errors are
nats-py's own, so callers and :func:`..natsio.retry.is_transient` treat both paths alike.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

#: JetStream's error codes for "the subject's last sequence is not the one expected" (a failed compare-and-set).
WRONG_LAST_SEQUENCE = (10071, 10164)
NO_RESPONDERS = "503"


class Requests:
    """One connection's requests, multiplexed over ``{inbox}.*``; subscribes on first use."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._cut = len(self._prefix) + 1
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Subscription | None = None

    async def request(self, subject: str, payload: bytes, *, timeout_s: float,
                      headers: dict[str, str] | None = None) -> Msg:
        """The reply; raises nats-py's ``TimeoutError`` or ``NoRespondersError`` like ``Client.request``."""
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
        token = str(next(self._tokens))
        reply: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = reply
        try:
            await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
            async with asyncio.timeout(timeout_s):
                msg = await reply
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            self._waiting.pop(token, None)
        if not msg.data and msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[self._cut:], None)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)


async def kv_write(requests: Requests, bucket: str, key: str, value: bytes, *, last: int,
                   timeout_s: float = 5.0) -> int:
    """Write ``key`` if its latest revision is ``last`` (0: if it has none); the new revision. Raises
    ``KeyWrongLastSequenceError`` when the compare-and-set fails, like ``KeyValue.update``."""
    try:
        msg = await requests.request(f"$KV.{bucket}.{key}", value, timeout_s=timeout_s,
                                     headers={"Nats-Expected-Last-Subject-Sequence": str(last)})
    except nats.errors.NoRespondersError:
        raise nats.js.errors.NoStreamResponseError from None
    ack: dict[str, Any] = json.loads(msg.data)
    if (error := ack.get("error")) is not None:
        if error.get("err_code") in WRONG_LAST_SEQUENCE:
            raise nats.js.errors.KeyWrongLastSequenceError(description=error.get("description"))
        raise nats.js.errors.APIError.from_error(error)
    return int(ack["seq"])

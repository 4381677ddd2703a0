"""One reply inbox per connection: a single wildcard subscription that hands each reply to whoever waits for it.

Replies of every kind come back here: request/reply on the hot path (:mod:`.requests`), bids of the auctions of
this process (:mod:`station_runtime.work.bids`), batch reads (:mod:`.listing`). A reply subject is
``{prefix}.{key}`` or ``{prefix}.{key}.{detail}``: the key names the waiter, the detail (optional) says more (the
station an auction request went to, so that "no responders" names the station that is gone).

NATS answers on the same subject with *status messages*: no payload and a ``Status`` header (``503`` no responders,
``204`` end of a batch, ...). They are not replies and must never be decoded as one: :func:`status` tells them
apart, and every reader of an inbox checks it first.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..contract import subjects
from ..contract.subjects import Header

log = logging.getLogger(__name__)

#: Called with the reply and the detail of its subject ("" when there is none).
ReplyHandler = Callable[[Msg, str], None]


def status(msg: Msg) -> str | None:
    """The status of a NATS status message (``"503"``, ``"204"``, ...), or None for an ordinary message."""
    if msg.data:
        return None
    headers = msg.headers
    return headers.get(Header.STATUS) if headers else None


class Inbox:
    """``{prefix}.>``, subscribed on first use; waiters register a key and get their replies as they come."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self.prefix: str = nc.new_inbox()
        self._cut = len(self.prefix) + 1
        self._keys = itertools.count(1)
        self._handlers: dict[str, ReplyHandler] = {}
        self._sub: Subscription | None = None
        #: Replies for nobody (their waiter gave up or finished): not even decoded.
        self.unclaimed = 0

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(subjects.inbox_all(self.prefix), cb=self._on_reply)

    def new_key(self) -> str:
        """A key no other waiter of this inbox has (a counter: no OS randomness per request)."""
        return format(next(self._keys), "x")

    def subject(self, key: str, detail: str | None = None) -> str:
        return f"{self.prefix}.{key}" if detail is None else f"{self.prefix}.{key}.{detail}"

    async def publish(self, subject: str, payload: bytes, key: str, detail: str | None = None, *,
                      headers: dict[str, str] | None = None) -> None:
        """Publish with this inbox's ``key`` (and ``detail``) as the reply subject."""
        await self._nc.publish(subject, payload, reply=self.subject(key, detail), headers=headers)

    def register(self, key: str, handler: ReplyHandler) -> None:
        self._handlers[key] = handler

    def unregister(self, key: str) -> None:
        self._handlers.pop(key, None)

    async def _on_reply(self, msg: Msg) -> None:
        key, _, detail = msg.subject[self._cut:].partition(".")
        handler = self._handlers.get(key)
        if handler is None:
            self.unclaimed += 1
            return
        try:
            handler(msg, detail)
        except Exception:  # one waiter's bug must not stop the inbox that every request of the process uses
            log.exception("inbox %s: handler of %r failed", self.prefix, key)

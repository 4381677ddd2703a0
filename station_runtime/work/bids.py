"""Collecting the bids of an auction on the connection's inbox (no subscription per auction).

An :class:`OpenAuction` is what one auction expects and has received so far. Each request goes to one station
with the station in its reply subject (``{inbox}.{auction}.{station}``), which does two things: when NATS answers
"no responders" for one (the station's connection is gone: it was killed) that station counts as having answered,
gone, and the auction need not wait for it until its deadline; and a bid is taken only from the station whose
reply subject it came on. A station may publish into the auctioneer's inbox only as a reply to a request it
received (its permissions: ``allow_responses``), so a bid that names another station is a forgery: it is dropped,
counted (``lattice_messages_dropped_total{reason="forged"}``) and kept on the auction for a ``security.forged_bid``
event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from ..contract.codec import decode_or_log
from ..contract.messages import AuctionBid, AuctionRequest
from ..contract.subjects import Status
from ..natsio.inbox import Inbox, status
from ..telemetry import metrics

log = logging.getLogger(__name__)

#: The decline recorded for a station that NATS says has no subscription (its process is gone).
GONE = "gone (no responders)"
#: Forged bids remembered per auction for its security events (more are counted, not kept).
MAX_FORGED_KEPT = 8


@dataclass
class OpenAuction:
    request: AuctionRequest
    #: The stations asked, whose answers the auction waits for.
    expected: set[str]
    #: A bid this good cannot be beaten (but by a tie-break): the auction may close at once when one arrives.
    perfect: float = float("inf")
    bids: list[AuctionBid] = field(default_factory=list)
    #: Set when the auction may close: a perfect bid came, or every expected station answered.
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when every expected station answered.
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    opened: float = field(default_factory=time.perf_counter)
    #: Eligible stations not asked (the sample left them out): asked in a second round if no one bids.
    unasked: int = 0
    #: Bids dropped because they named another station than the one whose reply they came as: (claimed, sender).
    forged: list[tuple[str, str]] = field(default_factory=list)

    @property
    def auction_id(self) -> str:
        return self.request.auction_id

    def waited_s(self) -> float:
        return time.perf_counter() - self.opened

    def add(self, bid: AuctionBid) -> None:
        if any(b.station_id == bid.station_id for b in self.bids):
            return  # a duplicate
        self.bids.append(bid)
        if self.expected <= {b.station_id for b in self.bids}:
            self.all_in.set()
            self.done.set()
        elif not bid.declined and bid.score >= self.perfect:
            self.done.set()


class BidCollector:
    """Every auction of this process, on the connection's inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def start(self) -> None:
        await self.inbox.start()

    def open(self, request: AuctionRequest, expected: set[str], perfect: float = float("inf")) -> OpenAuction:
        auction = OpenAuction(request, expected, perfect)
        self.inbox.register(request.auction_id, lambda msg, station_id: self._on_bid(auction, msg, station_id))
        if not expected:
            auction.done.set()
            auction.all_in.set()
        return auction

    def reply_to(self, auction: OpenAuction, station_id: str | None = None) -> str:
        return self.inbox.subject(auction.auction_id, station_id)

    def cancel(self, auction_id: str) -> None:
        """Stop collecting: bids that come after are dropped without being decoded."""
        self.inbox.unregister(auction_id)

    async def close(self, auction: OpenAuction, deadline_s: float) -> list[AuctionBid]:
        """The bids so far, once the auction may close (or at the deadline, counted from its opening). Bids
        still expected keep being collected until :meth:`rest` or :meth:`cancel`, in case the winner refuses."""
        await _wait(auction.done, deadline_s - auction.waited_s())
        if auction.all_in.is_set():
            self.cancel(auction.auction_id)
        return list(auction.bids)

    async def rest(self, auction: OpenAuction, deadline_s: float) -> list[AuctionBid]:
        """Every bid, once all expected stations answered or the deadline passed; then stop collecting."""
        try:
            await _wait(auction.all_in, deadline_s - auction.waited_s())
        finally:
            self.cancel(auction.auction_id)
        return list(auction.bids)

    @staticmethod
    def _on_bid(auction: OpenAuction, msg: Msg, station_id: str) -> None:
        code = status(msg)
        if code is not None:
            if code == Status.NO_RESPONDERS and station_id in auction.expected:
                auction.add(AuctionBid(auction_id=auction.auction_id, station_id=station_id, declined=True,
                                       reason=GONE))
            else:
                log.debug("auction %s: status %s on its inbox", auction.auction_id, code)
            return
        bid = decode_or_log(msg.data, AuctionBid, what="bid", logger=log)
        if bid is None or bid.auction_id != auction.auction_id:
            return
        if bid.station_id != station_id:
            metrics.MESSAGES_DROPPED.add(1, {"reason": "forged", "kind": "bid"})
            if len(auction.forged) < MAX_FORGED_KEPT:
                auction.forged.append((bid.station_id, station_id or "?"))
            log.warning("auction %s: dropped a bid naming %s that came as %s's reply", auction.auction_id,
                        bid.station_id, station_id or "no station's")
            return
        auction.add(bid)


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    if event.is_set() or timeout_s <= 0:
        return
    # asyncio.timeout, not wait_for: no task per wait (two per auction) on the hot path.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()

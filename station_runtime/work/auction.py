"""The auctioneer: places work on the station with the best bid, claims it with a CAS, hands it over.

    schedule(work):  claim (-> Scheduling, CAS)  ─┐ concurrently for new work: the record is created in
                     broadcast AuctionRequest    ─┘ Scheduling while the auction runs
                     collect bids until every eligible live station answered, or the deadline
                     no bid          -> Unschedulable (CAS), retried with backoff and when a station joins
                     best bid        -> Assigned to it (CAS, new attempt id) -> work.assign request
                     not accepted    -> the next bid (CAS, new attempt id), ...; none left -> Pending

A library: the local controller, the operator and the CLI all use it. ``policy="first_available"`` skips the
auction and assigns to the eligible station with the most free capacity in the registry (for comparison).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ..api.models import WorkItemSpec
from ..contract import subjects
from ..contract.codec import decode, decode_or_log, encode
from ..contract.errors import DecodeError
from ..contract.messages import (
    AuctionBid,
    AuctionRequest,
    ErrorCode,
    StationRecord,
    WorkAccept,
    WorkAssign,
    WorkError,
    WorkPhase,
    WorkRecord,
    utcnow,
)
from ..natsio.state import read_all
from ..routing import is_live
from . import phases, scoring
from .directory import StationDirectory
from .policy import WitnessPolicy, unschedulable_retry_at
from .store import Versioned, WorkStore

log = logging.getLogger(__name__)
P = WorkPhase


@dataclass(frozen=True)
class AuctionConfig:
    #: The auction closes when every eligible station answered, or after this long.
    deadline_s: float = 0.2
    #: If no station asked has said anything by the deadline (not even a decline), they are slow, not unable
    #: (a loaded machine, 50 station processes on two cores): wait this long (from the broadcast) before the
    #: work is called unschedulable. A decline is an answer: it never makes the auction wait.
    silence_patience_s: float = 2.0
    #: How long the winner has to accept the assignment before the next bid is tried.
    assign_timeout_s: float = 2.0
    policy: Literal["auction", "first_available"] = "auction"
    #: Ask at most this many eligible stations: the least loaded by the registry (plus what this auctioneer
    #: assigned since their last heartbeat), equal ones in an order that differs per item. Bounds an auction's
    #: cost however large the lattice. Two is the "power of two choices": nearly all the balance of asking
    #: everyone, at the price of two bids. None: ask all.
    max_bidders: int | None = 2
    #: The winner claims the work with its first record write (a CAS on the revision the auction started from),
    #: instead of the auctioneer writing Assigned before handing it over: one record write less per item. The
    #: assignment (attempt id, station) travels in WorkAssign; a second winner after a refusal is fenced by the
    #: same CAS. False: the auctioneer writes Assigned first (the record shows the assignment at once).
    winner_claims: bool = True
    #: Close at the first bid no station can beat (idle, every preferred label, exact capabilities) instead of
    #: waiting for every bidder asked: an idle lattice places work one bid-round-trip after the broadcast, and
    #: the slowest bidder asked no longer sets the pace (p99). The price: among equally perfect bids the first to
    #: answer wins rather than the deterministic tie-break (the sample is per item, so idle stations still share
    #: the work); bids that come after are kept in case the winner does not accept.
    close_on_perfect_bid: bool = True
    #: Offer new work first to the eligible station the auctioneer ranks first (:meth:`Auctioneer._rank_key`),
    #: with the assignment itself: the station takes it if it can start it at once or is no busier than the
    #: runner-up is believed to be (:meth:`Auctioneer._offer_target`), else it declines and the auction runs as
    #: usual. An auction whose only bidder is the expected winner, with bid and award in one round trip: no bid
    #: messages, no second bidder woken, one hop less. Only with ``winner_claims`` (the offered station claims
    #: the work with its first write, like any winner). False: every new item is auctioned.
    offer_first: bool = True


#: Placed work remembered until its outcome is seen (the oldest is forgotten first).
MAX_PLACED = 10_000


def requirements(spec: WorkItemSpec) -> scoring.Requirements:
    return scoring.Requirements(agent=spec.agent, capabilities=tuple(spec.required_capabilities),
                                labels=spec.constraints.labels, prefer_labels=spec.constraints.prefer_labels)


def new_traceparent() -> str:
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-01"


@dataclass
class _Collecting:
    expected: set[str]
    #: A bid this good cannot be beaten (but by a tie-break): the auction closes at once when one arrives.
    perfect: float = float("inf")
    bids: list[AuctionBid] = field(default_factory=list)
    #: Set when the auction may close: a perfect bid came, or every expected station answered.
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when every expected station answered.
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    opened: float = field(default_factory=time.perf_counter)
    #: Eligible stations not asked (the sample left them out): asked in a second round if no one bids.
    unasked: int = 0


class BidCollector:
    """One wildcard inbox subscription serves every auction of this process (no subscription per auction)."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._pending: dict[str, _Collecting] = {}

    async def start(self) -> None:
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_bid)

    def reply_to(self, auction_id: str) -> str:
        return f"{self._prefix}.{auction_id}"

    def open(self, auction_id: str, expected: set[str], perfect: float = float("inf")) -> _Collecting:
        collecting = _Collecting(expected, perfect)
        self._pending[auction_id] = collecting
        if not expected:
            collecting.done.set()
            collecting.all_in.set()
        return collecting

    def cancel(self, auction_id: str) -> None:
        self._pending.pop(auction_id, None)

    async def close(self, auction_id: str, collecting: _Collecting, deadline_s: float) -> list[AuctionBid]:
        """The bids so far, once the auction may close (or at the deadline, counted from the broadcast). Bids
        still expected keep being collected until :meth:`rest` or :meth:`cancel`, in case the winner refuses."""
        await _wait(collecting.done, deadline_s - (time.perf_counter() - collecting.opened))
        if collecting.all_in.is_set():
            self._pending.pop(auction_id, None)
        return list(collecting.bids)

    async def rest(self, auction_id: str, collecting: _Collecting, deadline_s: float) -> list[AuctionBid]:
        """Every bid, once all expected stations answered or the deadline passed; then stop collecting."""
        try:
            await _wait(collecting.all_in, deadline_s - (time.perf_counter() - collecting.opened))
        finally:
            self._pending.pop(auction_id, None)
        return list(collecting.bids)

    async def _on_bid(self, msg: Msg) -> None:
        if msg.subject.rsplit(".", 1)[-1] not in self._pending:
            return  # a bid after the auction closed (an early close leaves one per item): not even decoded
        bid = decode_or_log(msg.data, AuctionBid, what="bid", logger=log)
        if bid is None:
            return
        collecting = self._pending.get(bid.auction_id)
        if collecting is None or any(b.station_id == bid.station_id for b in collecting.bids):
            return  # late, or a duplicate
        collecting.bids.append(bid)
        if collecting.expected <= {b.station_id for b in collecting.bids}:
            collecting.all_in.set()
            collecting.done.set()
        elif not bid.declined and bid.score >= collecting.perfect:
            collecting.done.set()


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    if event.is_set() or timeout_s <= 0:
        return
    # asyncio.timeout, not wait_for: no task per wait (two per auction) on the hot path.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def _assigned_to(r: WorkRecord, station_id: str, attempt_id: str, attempt: int) -> WorkRecord:
    return phases.transition(r, P.ASSIGNED, station_id=station_id, attempt_id=attempt_id, attempt=attempt, reason="",
                             schedule_attempts=0, retry_at=None, assigned_at=utcnow())


def perfect_score(req: scoring.Requirements) -> float:
    """The best score any station can bid for ``req`` (idle, every preferred label, exactly the capabilities)."""
    return round(scoring.W_FREE + (scoring.W_PREFER if req.prefer_labels else 0.0)
                 + (scoring.W_FIT if req.capabilities else 0.0), 6)


class Auctioneer:
    def __init__(self, nc: NatsClient, store: WorkStore, *, directory: StationDirectory | None = None,
                 config: AuctionConfig | None = None, policy: WitnessPolicy | None = None) -> None:
        self.nc = nc
        self.store = store
        self.org = store.state.org
        self.directory = directory
        self.config = config or AuctionConfig()
        self.policy = policy or WitnessPolicy()
        self.bids = BidCollector(nc)
        self.auctions = 0
        self._auction_prefix = os.urandom(4).hex()
        self._auction_seq = 0
        #: Winners that did not accept their assignment (the next bid was tried).
        self.passed_over = 0
        #: New work offered to the expected winner first, offers it declined (then auctioned), and seconds from
        #: offer to answer.
        self.offers = 0
        self.offers_declined = 0
        self.offer_times_s: deque[float] = deque(maxlen=10_000)
        #: Recent auctions: bids received, and seconds from broadcast to close (for benchmarks and metrics).
        self.last_bid_counts: deque[int] = deque(maxlen=10_000)
        self.close_times_s: deque[float] = deque(maxlen=10_000)
        #: Work we handed to a station whose outcome we have not seen yet (:meth:`finished`), with when we stop
        #: counting it: by then the station's heartbeat says whether it still holds it (a submitter that never
        #: waits sees no outcome). Oldest first.
        self._placed: dict[str, tuple[str, float]] = {}
        #: Per station, how many of ``_placed`` are there: the registry's load is as old as the last heartbeat,
        #: and this keeps a burst of submissions from all picking the same stations.
        self._inflight: Counter[str] = Counter()
        #: When an outcome of our work was last seen, per station. Among equally loaded stations the one used
        #: last goes first: on a small machine a station process woken from idle is far slower for its first
        #: message than a warm one (measured: one item at a time on 3 stations took 1.47 ms spread, 1.17 ms on
        #: one), and a station with a free slot runs the work at once either way.
        self._last_used: dict[str, float] = {}
        #: Stations that fit a requirement (any liveness), by requirement, with the directory version they are of.
        self._fitting: dict[tuple[object, ...], tuple[int, list[StationRecord]]] = {}

    async def start(self) -> None:
        await self.bids.start()

    async def stations(self) -> list[StationRecord]:
        if self.directory is not None:
            return list(self.directory.records.values())
        out = []
        for item in await read_all(self.store.state.stations):
            try:
                out.append(decode(item.value, StationRecord))
            except DecodeError:
                continue
        return out

    # --- entry points ---------------------------------------------------------------------------------------

    async def submit(self, spec: WorkItemSpec, *, work_id: str | None = None, parent_id: str | None = None,
                     schedule: bool = True,
                     on_created: Callable[[Versioned], Awaitable[None]] | None = None) -> tuple[Versioned, bool]:
        """Create the work (idempotent on ``work_id``) and, unless it already existed, auction it at once.
        The record is created in Scheduling while the auction runs: one round trip saved. ``on_created`` runs
        once the record exists and before any station can have it (a waiter subscribes there)."""
        work_id = work_id or uuid.uuid4().hex
        phase = P.SCHEDULING if schedule and not spec.steps else P.PENDING
        now = utcnow()
        record = WorkRecord(org=self.org, work_id=work_id, spec=spec, phase=phase, parent_id=parent_id,
                            created_at=now, updated_at=now, scheduled_at=now if phase == P.SCHEDULING else None,
                            traceparent=new_traceparent())
        if phase != P.SCHEDULING:
            versioned, created = await self.store.create(record)
            if created:
                await self.store.emit("work", "submitted", record)
            return versioned, created
        stations = await self.stations()
        if (offer_to := self._offer_target(record, stations)) is not None:
            return await self._create_and_offer(record, offer_to, on_created)
        auction = await self._open_auction(record, stations)
        versioned, created = await self._create(record, on_created,
                                                undo=lambda: self.bids.cancel(auction[0].auction_id))
        if not created:
            return versioned, False
        return await self._conclude(versioned, auction), True

    async def _create(self, record: WorkRecord, on_created: Callable[[Versioned], Awaitable[None]] | None, *,
                      undo: Callable[[], object]) -> tuple[Versioned, bool]:
        """Create the record in Scheduling, let the submitter follow it, and record the event; ``undo`` what was
        prepared for placing it if it existed already (or the create failed)."""
        try:
            versioned, created = await self.store.create(record)
        except BaseException:
            undo()
            raise
        if not created:
            undo()
            return versioned, False
        if on_created is not None:
            await on_created(versioned)
        await self.store.emit("work", "submitted", record)
        return versioned, True

    async def schedule(self, work: Versioned | str) -> Versioned | None:
        """Auction existing work that is Pending, Unschedulable, or stuck in Scheduling. Safe to call from many
        processes at once: only the one whose claim (CAS) wins runs the auction."""
        current = work if isinstance(work, Versioned) else await self.store.get(work)
        if current is None:
            return None

        def claim(r: WorkRecord) -> WorkRecord | None:
            if r.phase not in (P.PENDING, P.UNSCHEDULABLE, P.SCHEDULING) or r.is_workflow or r.cancel_requested:
                return None
            now = utcnow()
            if r.phase == P.SCHEDULING:
                if (now - r.updated_at).total_seconds() < self.policy.scheduling_timeout_s:
                    return None  # someone else is auctioning it right now
                # Abandoned (its auctioneer died, or a winner that was to claim it never did): ours now.
                return r.model_copy(update={"scheduled_at": now, "updated_at": now})
            return phases.transition(r, P.SCHEDULING, scheduled_at=now)

        claimed = await self.store.mutate(current.record.work_id, claim, current=current)
        if claimed is None:
            return None
        auction = await self._open_auction(claimed.record, await self.stations())
        return await self._conclude(claimed, auction)

    # --- the offer: the expected winner first ------------------------------------------------------------------

    def _offer_target(self, record: WorkRecord, stations: list[StationRecord]) -> tuple[str, int | None] | None:
        """Whom to offer new work to, and the load up to which it should take it: the first of the ranking.
        Bound: while we believe the runner-up has a free slot, the load we believe it has (scaled to the first's
        capacity), beyond which the runner-up would likely have won the auction; a station that can start the
        work at once always takes it. When we believe every station is busy, a queue here is as good as a queue
        there: no bound (the station takes it if its queue has room). The only eligible station gets a plain
        assignment (it would be the only bidder)."""
        cfg = self.config
        if not (cfg.offer_first and cfg.winner_claims and cfg.policy == "auction"):
            return None
        eligible = self._eligible(requirements(record.spec), stations)
        if not eligible:
            return None
        key = self._rank_key(record.work_id)
        first, *rest = heapq.nsmallest(2, eligible, key=key)
        runner_up = key(rest[0])[0] if rest else 1.0
        return first.station_id, (int(runner_up * first.capacity) if runner_up < 1.0 else None)

    async def _create_and_offer(self, record: WorkRecord, target: tuple[str, int | None],
                                on_created: Callable[[Versioned], Awaitable[None]] | None) -> tuple[Versioned, bool]:
        # The offer carries the revision the station claims with, so it follows the create (the auction's request
        # goes out before it instead); still one hop less than create ∥ auction, then assign. Counted on the
        # station from now on, so that submissions meanwhile rank it as busier.
        self._place(record.work_id, target[0])
        versioned, created = await self._create(record, on_created, undo=lambda: self._unplace(record.work_id))
        if not created:
            return versioned, False
        self.offers += 1
        opened = time.perf_counter()
        placed = await self._offer(versioned, *target)
        self.offer_times_s.append(time.perf_counter() - opened)
        if placed is not None:
            return placed, True
        self.offers_declined += 1
        auction = await self._open_auction(versioned.record, await self.stations())
        return await self._conclude(versioned, auction), True

    async def _offer(self, versioned: Versioned, station_id: str, max_load: int | None) -> Versioned | None:
        """The assignment, to be claimed by the station's first write like any winner's, if it takes it."""
        r = versioned.record
        offered = Versioned(_assigned_to(r, station_id, os.urandom(8).hex(), r.attempt + 1), versioned.revision)
        if not await self._hand_over(offered, offer_max_load=max_load):
            self._unplace(r.work_id)
            return None
        return offered

    # --- the auction ----------------------------------------------------------------------------------------

    async def _open_auction(self, record: WorkRecord, stations: list[StationRecord],
                            *, everyone: bool = False) -> tuple[AuctionRequest, object]:
        req = requirements(record.spec)
        eligible = self._eligible(req, stations)
        self._auction_seq += 1  # bids come back to this process's inbox: unique here is unique enough
        request = AuctionRequest(auction_id=f"{self._auction_prefix}{self._auction_seq:x}", work_id=record.work_id,
                                 agent=req.agent,
                                 capabilities=list(req.capabilities), labels=dict(req.labels),
                                 prefer_labels=dict(req.prefer_labels),
                                 deadline_ms=max(int(self.config.deadline_s * 1000), 1))
        if self.config.policy == "first_available":
            return request, eligible
        bidders = eligible if everyone else self._sample(eligible, record.work_id)
        collecting = self.bids.open(request.auction_id, {s.station_id for s in bidders},
                                    perfect_score(req) if self.config.close_on_perfect_bid else float("inf"))
        collecting.unasked = len(eligible) - len(bidders)
        if not bidders:
            return request, collecting
        # Buffered, not awaited on the wire: the caller creates the record while stations bid.
        data, reply = encode(request), self.bids.reply_to(request.auction_id)
        if len(bidders) < len(stations):
            for station in bidders:
                await self.nc.publish(subjects.station_auction(self.org, station.station_id), data, reply=reply)
        else:
            await self.nc.publish(subjects.auction_request(self.org), data, reply=reply)
        return request, collecting

    def _eligible(self, req: scoring.Requirements, stations: list[StationRecord]) -> list[StationRecord]:
        """The live stations that can run work with ``req``. What fits changes only with the registry: with a
        directory it is remembered per requirement until the directory changes, and only liveness is checked
        per item."""
        now = utcnow()
        directory = self.directory
        if directory is None:
            return [s for s in stations if scoring.eligible(s, req, now)]
        key = (req.agent, req.capabilities, tuple(sorted(req.labels.items())))
        cached = self._fitting.get(key)
        if cached is None or cached[0] != directory.version:
            if len(self._fitting) >= 256:
                self._fitting.clear()
            fitting = [s for s in stations if scoring.fits_station(s, req)]
            cached = self._fitting[key] = (directory.version, fitting)
        return [s for s in cached[1] if is_live(s, now)]

    def _sample(self, eligible: list[StationRecord], work_id: str) -> list[StationRecord]:
        """The ``max_bidders`` first eligible stations of the ranking (:meth:`_rank_key`)."""
        k = self.config.max_bidders
        if k is None or len(eligible) <= k:
            return eligible
        return sorted(eligible, key=self._rank_key(work_id))[:k]

    def _rank_key(self, work_id: str) -> Callable[[StationRecord], tuple[float, float, str]]:
        """Least loaded first: the registry's load or, if more, our work there whose outcome we have not seen,
        per capacity; equal ones the one we used last first, then in an order that differs per work item."""
        self._expire()
        last_used, inflight = self._last_used, self._inflight

        def key(s: StationRecord) -> tuple[float, float, str]:
            load = max(s.load, inflight[s.station_id])
            return load / max(s.capacity, 1), -last_used.get(s.station_id, 0.0), scoring.tiebreak(work_id, s.station_id)

        return key

    def _place(self, work_id: str, station_id: str) -> None:
        self._unplace(work_id)
        record = self.directory.records.get(station_id) if self.directory is not None else None
        # Two beats: by then the station's own load (its heartbeat) counts the work if it still runs.
        horizon = 2 * (record.heartbeat_interval_s if record is not None else 2.0)
        if len(self._placed) >= MAX_PLACED:
            self._unplace(next(iter(self._placed)))
        self._placed[work_id] = (station_id, time.monotonic() + horizon)
        self._inflight[station_id] += 1

    def _unplace(self, work_id: str) -> str | None:
        placed = self._placed.pop(work_id, None)
        if placed is None:
            return None
        self._inflight[placed[0]] -= 1
        return placed[0]

    def _expire(self) -> None:
        now = time.monotonic()
        while self._placed:
            work_id, (_, until) = next(iter(self._placed.items()))
            if until > now:
                return
            self._unplace(work_id)

    def finished(self, work_id: str) -> None:
        """The outcome of work we placed was seen (its submitter's wait returned): its station has the slot back.
        Idempotent; a no-op for work placed elsewhere."""
        station_id = self._unplace(work_id)
        if station_id is not None:
            self._last_used[station_id] = time.monotonic()

    async def _conclude(self, versioned: Versioned, auction: tuple[AuctionRequest, object]) -> Versioned:
        request, handle = auction
        self.auctions += 1
        if isinstance(handle, list):  # first available: rank by free capacity from the registry
            ranked = sorted(handle, key=lambda s: (-(s.capacity - s.load) / max(s.capacity, 1), s.station_id))
            return await self._assign(versioned, [s.station_id for s in ranked]) if ranked else \
                await self._unschedulable(versioned)
        collecting: _Collecting = handle  # type: ignore[assignment]
        work_id = versioned.record.work_id
        try:
            bids = await self.bids.close(request.auction_id, collecting, self.config.deadline_s)
            self.close_times_s.append(time.perf_counter() - collecting.opened)
            self.last_bid_counts.append(len(bids))

            async def late_bids(until_s: float = self.config.deadline_s) -> list[str]:
                return [b.station_id for b in scoring.rank(
                    await self.bids.rest(request.auction_id, collecting, until_s), work_id)]

            candidates = [b.station_id for b in scoring.rank(bids, work_id)]
            if not candidates:
                silent = not collecting.bids and bool(collecting.expected)
                candidates = await late_bids(max(self.config.silence_patience_s, self.config.deadline_s)
                                             if silent else self.config.deadline_s)
            if not candidates and collecting.unasked:
                # The sample was busy or slow: ask every eligible station before calling it unschedulable.
                log.info("work %s: no bid from the %d asked; asking all", work_id, len(collecting.expected))
                second = await self._open_auction(versioned.record, await self.stations(), everyone=True)
                return await self._conclude(versioned, second)
            if not candidates:
                return await self._unschedulable(versioned, collecting)
            return await self._assign(versioned, candidates, late_bids)
        finally:
            self.bids.cancel(request.auction_id)

    async def _unschedulable(self, versioned: Versioned, collecting: _Collecting | None = None) -> Versioned:
        req = requirements(versioned.record.spec)
        reason = f"no station can run it: none bid with {req.describe()}"
        if collecting is not None and collecting.expected:
            # Say who was asked and what they answered: the difference between "full" and "never answered".
            answered = {b.station_id: b.reason or "declined" for b in collecting.bids if b.declined}
            silent = sorted(collecting.expected - set(answered))
            parts = [f"{s}: {why}" for s, why in sorted(answered.items())]
            waited = time.perf_counter() - collecting.opened
            parts += [f"{s}: no answer in {waited:.1f}s" for s in silent]
            reason += f" ({'; '.join(parts)})"
        else:  # nobody was asked: say why no registered station was eligible
            now = utcnow()
            why = {s.station_id: scoring.ineligibility(s, req, now) for s in await self.stations()}
            parts = [f"{sid}: {w}" for sid, w in sorted(why.items()) if w]
            reason += f" ({'; '.join(parts)})" if parts else " (no station registered)"
        log.info("work %s unschedulable: %s", versioned.record.work_id, reason)

        def mark(r: WorkRecord) -> WorkRecord | None:
            if r.phase != P.SCHEDULING:
                return None
            now = utcnow()
            return phases.transition(r, P.UNSCHEDULABLE, reason=reason, schedule_attempts=r.schedule_attempts + 1,
                                     retry_at=unschedulable_retry_at(r, now, self.policy))

        result = await self.store.mutate(versioned.record.work_id, mark, current=versioned)
        if result is None:
            return versioned
        await self.store.emit("work", "unschedulable", result.record)
        return result

    async def _assign(self, versioned: Versioned, candidates: list[str],
                      more: Callable[[], Awaitable[list[str]]] | None = None) -> Versioned:
        """Assign to the best candidate that accepts. If all refuse and the auction closed early (a perfect
        bid), the bids that came later are tried too."""
        current = versioned
        first = True
        queue = deque(candidates)
        tried: set[str] = set()
        while queue or more is not None:
            if not queue:
                assert more is not None
                queue.extend(s for s in await more() if s not in tried)
                more = None
                continue
            station_id = queue.popleft()
            tried.add(station_id)
            attempt_id = os.urandom(8).hex()
            claims = self.config.winner_claims and current.record.phase == P.SCHEDULING
            bump = first or claims  # every claim starts from the stored record: each is the next attempt

            def assign(r: WorkRecord, station_id: str = station_id, attempt_id: str = attempt_id,
                       bump: bool = bump, previous: str | None = current.record.attempt_id) -> WorkRecord | None:
                if r.phase not in (P.SCHEDULING, P.ASSIGNED) or r.cancel_requested:
                    return None
                if r.phase == P.ASSIGNED and r.attempt_id != previous:
                    return None  # someone else moved it on
                return _assigned_to(r, station_id, attempt_id, r.attempt + 1 if bump else r.attempt)

            if claims:
                # Not written: the station's first write claims it, with a CAS on the stored revision.
                claim = assign(current.record)
                assigned = None if claim is None else Versioned(claim, current.revision)
            else:
                assigned = await self.store.mutate(current.record.work_id, assign, current=current)
            if assigned is None:
                latest = await self.store.get(current.record.work_id)
                return latest or current
            first = False
            if assigned.revision != current.revision:
                current = assigned
            self._place(assigned.record.work_id, station_id)
            if not claims:  # events follow stored changes: a claimed assignment is recorded by its winner's write
                await self.store.emit("work", "assigned", assigned.record)
            if await self._hand_over(assigned):
                return assigned
            self._unplace(assigned.record.work_id)
            self.passed_over += 1
            log.info("work %s: station %s did not accept; trying the next bid", current.record.work_id, station_id)
        if first:  # nobody was assigned (every late bid declined)
            return await self._unschedulable(current)
        return await self._back_to_pending(current, "no bidder accepted the assignment")

    async def _hand_over(self, assigned: Versioned, *, offer_max_load: int | None = None) -> bool:
        record = assigned.record
        assert record.station_id is not None
        try:
            assign = WorkAssign(record=record, revision=assigned.revision, offer_max_load=offer_max_load)
            reply = await self.store.state.requests.request(subjects.work_assign(self.org, record.station_id),
                                                            encode(assign), timeout_s=self.config.assign_timeout_s)
            accept = decode(reply.data, WorkAccept)
        except (NoRespondersError, NatsTimeoutError, DecodeError) as exc:
            log.info("work %s: assignment to %s failed: %s", record.work_id, record.station_id,
                     type(exc).__name__)
            return False
        return accept.accepted and accept.attempt_id == record.attempt_id

    async def _back_to_pending(self, current: Versioned, reason: str) -> Versioned:
        def requeue(r: WorkRecord) -> WorkRecord | None:
            if r.phase not in (P.ASSIGNED, P.SCHEDULING) or r.attempt_id != current.record.attempt_id:
                return None
            # Assignments the winners were to claim were never written: the attempt still counts.
            attempt = r.attempt + 1 if r.phase == P.SCHEDULING else r.attempt
            if attempt > r.spec.max_retries:
                return phases.transition(r, P.ESCALATED, reason=reason, attempt=attempt,
                                         error=WorkError(code=ErrorCode.INTERNAL, message=reason))
            return phases.transition(r, P.PENDING, reason=reason, attempt=attempt,
                                     retry_at=utcnow() + timedelta(seconds=self.policy.unschedulable_base_s))

        result = await self.store.mutate(current.record.work_id, requeue, current=current)
        if result is None:
            return current
        await self.store.emit("work", "escalated" if result.record.phase == P.ESCALATED else "requeued",
                              result.record)
        return result

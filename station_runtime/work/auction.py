"""The auctioneer: places work on the station with the best bid; the winner claims it with a CAS.

    submit(work):   create the record in Scheduling, then
                    offer it to the expected winner (the first of the ranking)   taken -> done
                    or auction it: AuctionRequest to a sample of the eligible stations (or all), bids until every
                    station asked answered, a perfect bid came, or the deadline; nobody bid -> ask everyone
                    best bid        -> work.assign to it (the record as assigned + the revision to claim from)
                    not accepted    -> the next bid (new attempt id), ...
    no bid, stations busy (full, draining)  -> Pending with a short backoff: waits for room, spends no retry
    no bid, nobody can run it               -> Unschedulable with a backoff (and again when a station joins)
    the agent cannot be loaded anywhere     -> Failed at once, saying why

A library: the local controller, the operator and the CLI all use it, through a :class:`~..client.LatticeClient`
(one per org and process, shared with that process's witness). The decisions are pure functions in
:mod:`.placement` and :mod:`.scoring`; the memory of what was placed where is :class:`~.inflight.InFlight`; bids
come back through :mod:`.bids`. What is left here is their order and the I/O between them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import Span

from ..backoff import compute_backoff
from ..contract import subjects
from ..contract.codec import decode, encode
from ..contract.errors import DecodeError
from ..contract.ids import new_attempt_id
from ..contract.messages import (
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
from ..contract.specs import WorkItemSpec
from ..routing import is_live
from ..telemetry import metrics, tracing
from . import phases, placement, scoring
from .bids import BidCollector, OpenAuction
from .directory import StationDirectory
from .inflight import InFlight
from .policy import WitnessPolicy, unschedulable_retry_at
from .store import Versioned, WorkStore

log = logging.getLogger(__name__)
P = WorkPhase

#: Requirements whose fitting stations are remembered (until the directory changes); beyond, the cache restarts.
MAX_FIT_CACHE: Final = 256
#: Recent auctions and offers whose timings and bid counts are kept (for benchmarks and metrics).
STATS_WINDOW: Final = 10_000
#: The heartbeat assumed for a station the directory does not know (yet): a placement there is counted this long
#: times two.
DEFAULT_HEARTBEAT_S: Final = 2.0
#: Contention backoff: work that found every station busy is placed again after this much, doubling per try.
ROOM_BACKOFF_BASE_S: Final = 0.05
ROOM_BACKOFF_MAX_S: Final = 1.0


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
    #: Offer new work first to the eligible station ranked first (:func:`.placement.offer_target`), with the
    #: assignment itself: the station takes it if it can start it at once or is no busier than the runner-up is
    #: believed to be, else it declines and the auction runs as usual. An auction whose only bidder is the
    #: expected winner, with bid and award in one round trip: no bid messages, no second bidder woken, one hop
    #: less. Only with ``winner_claims`` (the offered station claims the work with its first write, like any
    #: winner). False: every new item is auctioned.
    offer_first: bool = True


def _assigned_to(r: WorkRecord, station_id: str, attempt: int) -> WorkRecord:
    return phases.transition(r, P.ASSIGNED, station_id=station_id, attempt_id=new_attempt_id(), attempt=attempt,
                             reason="", schedule_attempts=0, retry_at=None, assigned_at=utcnow())


class Auctioneer:
    def __init__(self, nc: NatsClient, store: WorkStore, *, directory: StationDirectory,
                 config: AuctionConfig | None = None, policy: WitnessPolicy | None = None) -> None:
        self.nc = nc
        self.store = store
        self.org = store.state.org
        self.directory = directory
        self.config = config or AuctionConfig()
        self.policy = policy or WitnessPolicy()
        self.bids = BidCollector(store.state.inbox)
        self.inflight = InFlight()
        self.auctions = 0
        #: Winners that did not accept their assignment (the next bid was tried).
        self.passed_over = 0
        #: New work offered to the expected winner first, offers it declined (then auctioned), and seconds from
        #: offer to answer.
        self.offers = 0
        self.offers_declined = 0
        self.offer_times_s: deque[float] = deque(maxlen=STATS_WINDOW)
        #: Recent auctions: bids received, and seconds from broadcast to close (for benchmarks and metrics).
        self.last_bid_counts: deque[int] = deque(maxlen=STATS_WINDOW)
        self.close_times_s: deque[float] = deque(maxlen=STATS_WINDOW)
        #: Placements that found every station busy (the work waited for room, no retry spent).
        self.contended = 0
        #: Stations that fit a requirement (any liveness), by requirement, with the directory version they are of.
        self._fitting: dict[tuple[object, ...], tuple[int, list[StationRecord]]] = {}

    async def start(self) -> None:
        await self.bids.start()

    def stations(self) -> list[StationRecord]:
        return list(self.directory.records.values())

    def finished(self, work_id: str) -> None:
        """The outcome of work we placed was seen (its submitter's wait returned): its station has the slot back.
        Idempotent; a no-op for work placed elsewhere."""
        self.inflight.finished(work_id)

    # --- entry points ---------------------------------------------------------------------------------------

    async def submit(self, spec: WorkItemSpec, *, work_id: str | None = None, parent_id: str | None = None,
                     depth: int = 0, schedule: bool = True,
                     on_created: Callable[[Versioned], Awaitable[None]] | None = None) -> tuple[Versioned, bool]:
        """Create the work (idempotent on ``work_id``: the same spec again returns the first record; another spec
        under that id raises :class:`ConflictError`) and, unless it already existed, place it at once. The
        record is created in Scheduling while the placement runs: one round trip saved. ``on_created`` runs once
        the record exists and before any station can have it (a waiter subscribes there)."""
        work_id = work_id or uuid.uuid4().hex
        with tracing.span("lattice.submit", kind="producer", attributes=work_attributes(self.org, work_id, spec)):
            return await self._submit(spec, work_id, parent_id, depth, schedule, on_created)

    async def _submit(self, spec: WorkItemSpec, work_id: str, parent_id: str | None, depth: int, schedule: bool,
                      on_created: Callable[[Versioned], Awaitable[None]] | None) -> tuple[Versioned, bool]:
        phase = P.SCHEDULING if schedule and not spec.steps else P.PENDING
        now = utcnow()
        # The record carries the submission's span: whoever acts on the work later (a station, the witness, a
        # restarted station) continues this trace from it.
        record = WorkRecord(org=self.org, work_id=work_id, spec=spec, phase=phase, parent_id=parent_id,
                            depth=depth, created_at=now, updated_at=now,
                            scheduled_at=now if phase == P.SCHEDULING else None,
                            traceparent=tracing.new_traceparent())
        if phase != P.SCHEDULING:
            return await self._create(record, on_created)
        with tracing.span("lattice.place") as placing:  # the work's attributes are its parent's (lattice.submit)
            return await self._place_new(record, on_created, placing)

    async def _place_new(self, record: WorkRecord, on_created: Callable[[Versioned], Awaitable[None]] | None,
                         placing: Span) -> tuple[Versioned, bool]:
        work_id, spec = record.work_id, record.spec
        stations = self.stations()
        req = scoring.requirements(spec)
        cfg = self.config
        target = None
        if cfg.offer_first and cfg.winner_claims:
            target = placement.offer_target(self._eligible(req, stations), self.inflight.rank_key(work_id))
        if target is not None:
            # Counted on the station from now on, so that submissions meanwhile rank it as busier.
            self._place(work_id, target.station_id)
            versioned, created = await self._create(record, on_created, undo=lambda: self.inflight.unplace(work_id))
            if not created:
                return versioned, False
            return placed(placing, await self._offer(versioned, target, placing)), True
        # The auction's request goes out before the create: stations bid while the record is written.
        auction = await self._open_auction(record, req, stations)
        versioned, created = await self._create(record, on_created, undo=lambda: self.bids.cancel(auction.auction_id))
        if not created:
            return versioned, False
        return placed(placing, await self._conclude(versioned, auction, placing)), True

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
        record = claimed.record
        with tracing.span("lattice.place", parent=tracing.incoming(None, record.traceparent),
                          attributes=work_attributes(self.org, record.work_id, record.spec)) as placing:
            placing.set_attribute("lattice.work.attempt", record.attempt)
            await self.store.emit("work", "scheduled", record)
            auction = await self._open_auction(record, scoring.requirements(record.spec), self.stations())
            return placed(placing, await self._conclude(claimed, auction, placing))

    async def _create(self, record: WorkRecord, on_created: Callable[[Versioned], Awaitable[None]] | None, *,
                      undo: Callable[[], object] = lambda: None) -> tuple[Versioned, bool]:
        """Create the record, let the submitter follow it, and record the event; ``undo`` what was prepared for
        placing it if it existed already (or the create failed)."""
        try:
            versioned, created = await self.store.submit(record, on_created)
        except BaseException:  # whatever ended the create (a cancellation too): give back what was prepared
            undo()
            raise
        if not created:
            undo()
        return versioned, created

    # --- the offer: the expected winner first ------------------------------------------------------------------

    async def _offer(self, versioned: Versioned, target: placement.OfferTarget, placing: Span) -> Versioned:
        self.offers += 1
        opened = time.perf_counter()
        r = versioned.record
        offered = Versioned(_assigned_to(r, target.station_id, r.attempt + 1), versioned.revision)
        taken = await self._hand_over(offered, offer_max_load=target.max_load)
        self.offer_times_s.append(time.perf_counter() - opened)
        metrics.OFFERS.add(1, {"taken": "true" if taken else "false"})
        if tracing.enabled():
            placing.add_event("offer", {"lattice.station.id": target.station_id, "taken": taken})
        if taken:
            return offered
        self.inflight.unplace(r.work_id)
        self.offers_declined += 1
        auction = await self._open_auction(r, scoring.requirements(r.spec), self.stations())
        return await self._conclude(versioned, auction, placing)

    # --- the auction ----------------------------------------------------------------------------------------

    async def _open_auction(self, record: WorkRecord, req: scoring.Requirements, stations: list[StationRecord],
                            *, everyone: bool = False) -> OpenAuction:
        eligible = self._eligible(req, stations)
        request = AuctionRequest(auction_id=self.bids.inbox.new_key(), work_id=record.work_id, agent=req.agent,
                                 capabilities=list(req.capabilities), labels=dict(req.labels),
                                 prefer_labels=dict(req.prefer_labels),
                                 deadline_ms=max(int(self.config.deadline_s * 1000), 1))
        bidders = eligible if everyone else placement.sample(eligible, self.inflight.rank_key(record.work_id),
                                                             self.config.max_bidders)
        perfect = scoring.perfect_score(req) if self.config.close_on_perfect_bid else float("inf")
        auction = self.bids.open(request, {s.station_id for s in bidders}, perfect)
        auction.unasked = len(eligible) - len(bidders)
        if not bidders:
            return auction
        # Buffered, not awaited on the wire: the caller creates the record while stations bid. One request per
        # station, its id in the reply subject: a bid is then taken only from the station it names (BidCollector).
        data = encode(request)
        trace_headers = tracing.headers()
        for station in bidders:
            await self.nc.publish(subjects.station_auction(self.org, station.station_id), data,
                                  reply=self.bids.reply_to(auction, station.station_id), headers=trace_headers)
        return auction

    def _eligible(self, req: scoring.Requirements, stations: list[StationRecord]) -> list[StationRecord]:
        """The live stations that can run work with ``req``. What fits changes only with the registry: it is
        remembered per requirement until the directory changes, and only liveness is checked per item."""
        now = utcnow()
        version = self.directory.version
        key = req.cache_key()
        cached = self._fitting.get(key)
        if cached is None or cached[0] != version:
            if len(self._fitting) >= MAX_FIT_CACHE:
                self._fitting.clear()
            cached = self._fitting[key] = (version, [s for s in stations if scoring.fits_station(s, req)])
        return [s for s in cached[1] if is_live(s, now)]

    def _place(self, work_id: str, station_id: str) -> None:
        record = self.directory.records.get(station_id)
        # Two beats: by then the station's own load (its heartbeat) counts the work if it still runs.
        self.inflight.place(work_id, station_id, 2 * (record.heartbeat_interval_s if record else DEFAULT_HEARTBEAT_S))

    async def _conclude(self, versioned: Versioned, auction: OpenAuction, placing: Span) -> Versioned:
        """Close the auction (asking everyone in a second round if the sample did not bid) and act on it."""
        self.auctions += 1
        cfg = self.config
        work_id = versioned.record.work_id
        req = scoring.requirements(versioned.record.spec)
        try:
            while True:
                bids = await self.bids.close(auction, cfg.deadline_s)
                waited = auction.waited_s()
                self.close_times_s.append(waited)
                self.last_bid_counts.append(len(bids))
                metrics.AUCTION_CLOSE.record(waited)
                if tracing.enabled():
                    for bid in auction.bids:
                        placing.add_event("bid", {"lattice.station.id": bid.station_id, "score": bid.score,
                                                  "declined": bid.declined, "reason": bid.reason})
                candidates = [b.station_id for b in scoring.rank(bids, work_id)]
                if not candidates:
                    silent = not auction.bids and bool(auction.expected)
                    patience = max(cfg.silence_patience_s, cfg.deadline_s) if silent else cfg.deadline_s
                    candidates = [b.station_id for b in scoring.rank(await self.bids.rest(auction, patience),
                                                                     work_id)]
                if candidates:
                    return await self._assign(versioned, candidates, auction)
                if not auction.unasked:
                    return await self._nobody(versioned, req, auction)
                # The sample was busy or slow: ask every eligible station before calling it unschedulable.
                log.info("work %s: no bid from the %d asked; asking all", work_id, len(auction.expected))
                self.bids.cancel(auction.auction_id)
                auction = await self._open_auction(versioned.record, req, self.stations(), everyone=True)
        finally:
            self.bids.cancel(auction.auction_id)
            for claimed, sender in auction.forged:
                await self.store.emit("security", "forged_bid", versioned.record, claimed=claimed, sender=sender)

    async def _late_bids(self, auction: OpenAuction, work_id: str) -> list[str]:
        return [b.station_id for b in scoring.rank(await self.bids.rest(auction, self.config.deadline_s), work_id)]

    async def _assign(self, versioned: Versioned, candidates: list[str], auction: OpenAuction) -> Versioned:
        """Assign to the best candidate that accepts. If all refuse and the auction closed early (a perfect
        bid), the bids that came later are tried too."""
        current = versioned
        first = True
        queue = deque(candidates)
        tried: set[str] = set()
        late = True
        while queue or late:
            if not queue:
                queue.extend(s for s in await self._late_bids(auction, current.record.work_id) if s not in tried)
                late = False
                continue
            station_id = queue.popleft()
            tried.add(station_id)
            claims = self.config.winner_claims and current.record.phase == P.SCHEDULING
            bump = first or claims  # every claim starts from the stored record: each is the next attempt

            def assign(r: WorkRecord, station_id: str = station_id, bump: bool = bump,
                       previous: str | None = current.record.attempt_id) -> WorkRecord | None:
                if r.phase not in (P.SCHEDULING, P.ASSIGNED) or r.cancel_requested:
                    return None
                if r.phase == P.ASSIGNED and r.attempt_id != previous:
                    return None  # someone else moved it on
                return _assigned_to(r, station_id, r.attempt + 1 if bump else r.attempt)

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
            self.inflight.unplace(assigned.record.work_id)
            self.passed_over += 1
            log.info("work %s: station %s did not accept; trying the next bid", current.record.work_id, station_id)
        if first:  # nobody was assigned (every late bid declined)
            return await self._nobody(current, scoring.requirements(current.record.spec), auction)
        return await self._wait_for_room(current, "no bidder accepted the assignment (they filled up meanwhile)")

    async def _hand_over(self, assigned: Versioned, *, offer_max_load: int | None = None) -> bool:
        record = assigned.record
        assert record.station_id is not None
        try:
            assign = WorkAssign(record=record, revision=assigned.revision, offer_max_load=offer_max_load)
            reply = await self.store.state.requests.request(subjects.work_assign(self.org, record.station_id),
                                                            encode(assign), timeout_s=self.config.assign_timeout_s,
                                                            headers=tracing.headers())
            accept = decode(reply.data, WorkAccept)
        except (NoRespondersError, NatsTimeoutError, DecodeError) as exc:
            log.info("work %s: assignment to %s failed: %s", record.work_id, record.station_id,
                     type(exc).__name__)
            return False
        return accept.accepted and accept.attempt_id == record.attempt_id

    # --- nobody took it ---------------------------------------------------------------------------------------

    async def _nobody(self, versioned: Versioned, req: scoring.Requirements, auction: OpenAuction) -> Versioned:
        """No station bid: it cannot load the agent (fail), every one is busy (wait for room), or none can run it
        (unschedulable)."""
        stations = self.stations()
        if (broken := placement.unloadable(req, stations)) is not None:
            return await self._fail(versioned, broken)
        if placement.contended(auction.bids, auction.expected):
            busy = "; ".join(f"{b.station_id}: {b.reason}" for b in sorted(auction.bids, key=lambda b: b.station_id))
            return await self._wait_for_room(versioned, f"waiting for a free slot ({busy})")
        reason = placement.unschedulable_reason(req, asked=auction.expected, bids=auction.bids,
                                                waited_s=auction.waited_s(), registered=stations)
        return await self._unschedulable(versioned, reason)

    async def _unschedulable(self, versioned: Versioned, reason: str) -> Versioned:
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

    async def _wait_for_room(self, current: Versioned, reason: str) -> Versioned:
        """Back to Pending, placed again after a short backoff: nothing failed, the stations were busy. No attempt
        is counted (the retry budget counts attempts that ran) and nothing escalates."""
        self.contended += 1
        previous = current.record.attempt_id

        def wait(r: WorkRecord) -> WorkRecord | None:
            if r.phase not in (P.ASSIGNED, P.SCHEDULING) or r.attempt_id != previous:
                return None
            delay = compute_backoff(r.schedule_attempts, base_s=ROOM_BACKOFF_BASE_S, max_s=ROOM_BACKOFF_MAX_S)
            return phases.transition(r, P.PENDING, reason=reason, schedule_attempts=r.schedule_attempts + 1,
                                     retry_at=utcnow() + timedelta(seconds=delay))

        result = await self.store.mutate(current.record.work_id, wait, current=current)
        if result is None:
            return current
        await self.store.emit("work", "requeued", result.record, contention=True)
        return result

    async def _fail(self, versioned: Versioned, reason: str) -> Versioned:
        log.warning("work %s failed: %s", versioned.record.work_id, reason)
        error = WorkError(code=ErrorCode.NOT_FOUND, message=reason)

        def fail(r: WorkRecord) -> WorkRecord | None:
            if r.phase != P.SCHEDULING:
                return None
            return phases.transition(r, P.FAILED, reason=reason, error=error)

        result = await self.store.mutate(versioned.record.work_id, fail, current=versioned)
        if result is None:
            return versioned
        await self.store.emit("work", "failed", result.record)
        return result


def work_attributes(org: str, work_id: str, spec: WorkItemSpec) -> dict[str, str | None]:
    """Pure: what a person filters a work item's spans on."""
    return {"lattice.org": org, "lattice.work.id": work_id, "lattice.agent": spec.agent,
            "lattice.capabilities": ",".join(spec.required_capabilities) or None}


def placed(placing: Span, versioned: Versioned) -> Versioned:
    """Say on the placement's span where the work went."""
    if tracing.enabled():
        record = versioned.record
        placing.set_attributes({"lattice.work.phase": record.phase.value, "lattice.station.id": record.station_id
                                or "", "lattice.work.reason": record.reason or ""})
    return versioned

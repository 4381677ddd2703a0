"""Pure placement and admission: whom the auctioneer offers work to and asks, what it says when nobody takes the
work, what a station answers, which agent runs the work, what the auctioneer remembers placing, and when the
witness next looks at a record. No NATS."""

from __future__ import annotations

from datetime import timedelta

import pytest

from station_runtime.contract.messages import AuctionBid, WorkPhase, WorkRecord, utcnow
from station_runtime.contract.specs import WorkConstraints, WorkItemSpec, WorkTimeouts
from station_runtime.station.admission import StationView, judge, pick_agent
from station_runtime.work import placement, scoring
from station_runtime.work.inflight import InFlight
from station_runtime.work.policy import WitnessPolicy, next_check
from tests.work.test_pure import station

P = WorkPhase
REQ = scoring.Requirements(agent="echo")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- what the auctioneer remembers --------------------------------------------------------------------------


def test_placed_work_counts_on_its_station_until_its_outcome_or_its_horizon() -> None:
    clock = Clock()
    inflight = InFlight(clock=clock)
    inflight.place("w1", "s1", horizon_s=4.0)
    inflight.place("w2", "s1", horizon_s=4.0)
    inflight.place("w3", "s2", horizon_s=1.0)
    assert (inflight.count("s1"), inflight.count("s2")) == (2, 1)
    inflight.place("w1", "s2", horizon_s=4.0)  # placed again elsewhere: moves
    assert (inflight.count("s1"), inflight.count("s2")) == (1, 2)
    inflight.finished("w2")
    assert inflight.count("s1") == 0 and len(inflight) == 2
    clock.now += 2.0  # w3's horizon passed: the station's own heartbeat speaks for it now
    inflight.expire()
    assert inflight.count("s2") == 1 and len(inflight) == 1
    inflight.finished("nobody-placed-this")  # idempotent, a no-op
    assert len(inflight) == 1


def test_the_memory_is_bounded_and_forgets_the_oldest() -> None:
    inflight = InFlight(max_placed=3)
    for i in range(5):
        inflight.place(f"w{i}", "s1", horizon_s=60.0)
    assert len(inflight) == 3 and inflight.count("s1") == 3
    inflight.forget_station("s1")


def test_ranking_counts_unseen_work_and_prefers_the_station_used_last() -> None:
    clock = Clock()
    inflight = InFlight(clock=clock)
    a, b, c = station("a"), station("b"), station("c")
    inflight.place("x1", "a", horizon_s=10)
    key = inflight.rank_key("w")
    assert sorted([a, b, c], key=key)[-1].station_id == "a"  # busier by what we placed there
    inflight.place("x2", "c", horizon_s=10)
    inflight.finished("x2")  # c finished our work last: among the idle ones it goes first
    assert sorted([a, b, c], key=inflight.rank_key("w"))[0].station_id == "c"


# --- offers, samples, and nobody taking the work -----------------------------------------------------------------


def test_new_work_is_offered_to_the_first_of_the_ranking_with_the_runner_ups_load_as_its_bound() -> None:
    inflight = InFlight()
    idle, half = station("idle", load=0, cap=4), station("half", load=2, cap=4)
    target = placement.offer_target([half, idle], inflight.rank_key("w"))
    assert target == placement.OfferTarget("idle", max_load=2)
    full = [station("f1", load=4, cap=4), station("f2", load=5, cap=4)]
    assert placement.offer_target(full, inflight.rank_key("w")) == placement.OfferTarget("f1", None)  # no bound
    assert placement.offer_target([idle], inflight.rank_key("w")) == placement.OfferTarget("idle", None)
    assert placement.offer_target([], inflight.rank_key("w")) is None


def test_an_auction_asks_the_least_loaded_few() -> None:
    stations = [station(f"s{i}", load=i % 4) for i in range(8)]
    key = InFlight().rank_key("w")
    asked = placement.sample(stations, key, 2)
    assert len(asked) == 2 and all(s.load == 0 for s in asked)
    assert placement.sample(stations, key, None) == stations
    assert placement.sample(stations[:2], key, 5) == stations[:2]


def _bid(sid: str, *, declined: bool = False, reason: str = "", score: float = 0.5) -> AuctionBid:
    return AuctionBid(auction_id="a", station_id=sid, declined=declined, reason=reason, score=score)


def test_contention_is_every_station_asked_answering_busy() -> None:
    full, draining = _bid("s1", declined=True, reason="full"), _bid("s2", declined=True, reason="draining")
    assert placement.contended([full, draining], {"s1", "s2"})
    assert not placement.contended([full], {"s1", "s2"})  # s2 silent: may be dead, not busy
    assert not placement.contended([full, _bid("s2", declined=True, reason="does not host 'x'")], {"s1", "s2"})
    assert not placement.contended([], set())


def test_the_unschedulable_reason_names_every_station_asked_and_what_it_said() -> None:
    reason = placement.unschedulable_reason(REQ, asked={"s1", "s2", "s3"}, waited_s=0.25,
                                            bids=[_bid("s1", declined=True, reason="full"),
                                                  _bid("s2", declined=True)])
    assert reason == ("no station can run it: none bid with agent 'echo' (s1: full; s2: declined; "
                      "s3: no answer in 0.2s)")
    nobody = placement.unschedulable_reason(REQ, asked=(), bids=(), waited_s=0,
                                            registered=[station("old", age_s=10), station("other", agents=())])
    assert "old: last heartbeat 10.0s ago" in nobody and "other: does not host 'echo'" in nobody
    assert placement.unschedulable_reason(REQ, asked=(), bids=(), waited_s=0).endswith("(no station registered)")


def test_an_agent_nobody_can_load_is_named_with_every_stations_reason() -> None:
    broken = station("s1", agents=()).model_copy(update={"agent_errors": {"echo": "cannot import module 'x'"}})
    also = station("s2", agents=()).model_copy(update={"agent_errors": {"echo": "key file missing"}})
    why = placement.unloadable(REQ, [broken, also])
    assert why is not None and "s1: cannot import module 'x'; s2: key file missing" in why
    assert placement.unloadable(REQ, [broken, station("s3")]) is None  # s3 hosts it
    assert placement.unloadable(REQ, [station("s4", agents=())]) is None  # nobody tried to load it
    assert placement.unloadable(scoring.Requirements(capabilities=("c",)), [broken]) is None
    dead = broken.model_copy(update={"last_heartbeat": utcnow() - timedelta(seconds=60)})
    assert placement.unloadable(REQ, [dead]) is None


# --- what a station answers ----------------------------------------------------------------------------------


def view(**kw: object) -> StationView:
    base: dict[str, object] = {"station_id": "s1", "draining": False, "load": 0, "capacity": 2, "queue_limit": 2,
                               "agents": frozenset({"echo"}), "capabilities": frozenset({"gpu"}),
                               "labels": {"zone": "a"}}
    return StationView(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("station_view", "kwargs", "reason"), [
    (view(), {}, ""),
    (view(draining=True), {}, "draining"),
    (view(), {"assigned_to": "s2"}, "assigned to s2, not to s1"),
    (view(), {"running": True}, "already running"),
    (view(agents=frozenset()), {}, "does not host 'echo'"),
    (view(load=4), {}, "full"),
    (view(load=3), {"offer_max_load": 2}, "offer declined at load 3"),
    (view(load=1), {"offer_max_load": 0}, ""),  # a free run slot: an offer is taken whatever the bound
    (view(load=3), {"offer_max_load": 3}, ""),
])
def test_one_rule_set_answers_bids_offers_and_assignments(station_view: StationView, kwargs: dict[str, object],
                                                          reason: str) -> None:
    assert judge(station_view, REQ, **kwargs).reason == reason  # type: ignore[arg-type]


def test_a_bid_carries_the_score_and_a_decline_says_why() -> None:
    req = scoring.Requirements(agent="echo", capabilities=("gpu",), labels={"zone": "a"}, prefer_labels={"zone": "a"})
    verdict = judge(view(), req, bid=True)
    assert verdict.ok and verdict.score == scoring.perfect_score(req)
    assert judge(view(), scoring.Requirements(labels={"zone": "b"}), bid=True).reason == "labels do not match"
    assert judge(view(), scoring.Requirements(capabilities=("tpu",)), bid=True).reason == "lacks ['tpu']"


def test_the_agent_that_runs_work_is_the_named_one_or_the_least_busy_fitting_one() -> None:
    hosted = [("a", ["sum"], 2), ("b", ["sum", "x"], 0), ("c", [], 0)]
    assert pick_agent(hosted, scoring.Requirements(agent="a")) == "a"
    assert pick_agent(hosted, scoring.Requirements(agent="zz")) is None
    assert pick_agent(hosted, scoring.Requirements(capabilities=("sum",))) == "b"
    assert pick_agent(hosted, scoring.Requirements(capabilities=("x", "gpu"))) is None
    assert pick_agent(hosted, scoring.Requirements(capabilities=("x", "gpu")), station_capabilities=("gpu",)) == "b"


# --- when the witness looks again ------------------------------------------------------------------------------


def rec(phase: WorkPhase, **kw: object) -> WorkRecord:
    spec = kw.pop("spec", WorkItemSpec(agent="echo"))
    return WorkRecord(org="o", work_id="w", spec=spec, phase=phase, **kw)  # type: ignore[arg-type]


def test_the_witness_looks_again_when_a_deadline_or_backoff_falls_due() -> None:
    policy = WitnessPolicy(accept_timeout_s=5, pending_grace_s=2, scheduling_timeout_s=5,
                           stuck_threshold_s=30, cancel_grace_s=10, deadline_grace_s=1)
    t = utcnow()
    s = timedelta(seconds=1)
    assert next_check(rec(P.PENDING, updated_at=t), policy) == t + 2 * s
    assert next_check(rec(P.PENDING, updated_at=t, retry_at=t + 7 * s), policy) == t + 7 * s
    assert next_check(rec(P.SCHEDULING, updated_at=t), policy) == t + 5 * s
    assert next_check(rec(P.UNSCHEDULABLE, updated_at=t, retry_at=t + 3 * s), policy) == t + 3 * s
    assert next_check(rec(P.ASSIGNED, assigned_at=t), policy) == t + 5 * s
    running = rec(P.RUNNING, started_at=t, spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(
        start_to_close_seconds=10)))
    assert next_check(running, policy) == t + 11 * s  # the station's own deadline, then the witness's grace
    assert next_check(running.model_copy(update={"spec": WorkItemSpec(agent="e")}), policy) == t + 30 * s  # stuck
    deadline = rec(P.PENDING, created_at=t, updated_at=t + 9 * s, spec=WorkItemSpec(
        agent="e", timeouts=WorkTimeouts(schedule_to_start_seconds=4)))
    assert next_check(deadline, policy) == t + 4 * s
    assert next_check(rec(P.SUCCEEDED, finished_at=t), policy) is None  # the server deletes it, after the retention
    assert next_check(rec(P.RUNNING, started_at=t, cancel_requested=True, updated_at=t), policy) == t + 10 * s
    workflow = rec(P.RUNNING, spec=WorkItemSpec(steps=[{"name": "a", "agent": "e"}]))  # type: ignore[list-item]
    assert next_check(workflow, policy) is None


def test_a_spec_keeps_its_constraints_in_its_requirements() -> None:
    spec = WorkItemSpec(required_capabilities=["c"], constraints=WorkConstraints(labels={"a": "1"},
                                                                                 prefer_labels={"b": "2"}))
    req = scoring.requirements(spec)
    assert (req.agent, req.capabilities, dict(req.labels), dict(req.prefer_labels)) == (None, ("c",), {"a": "1"},
                                                                                        {"b": "2"})
    assert req.cache_key() == (None, ("c",), (("a", "1"),))

"""Pure work logic: the phase machine, bid scoring and ranking, witness decisions, workflow templating."""

from __future__ import annotations

from datetime import timedelta

import pytest

from station_runtime.api.models import WorkConstraints, WorkflowStep, WorkItemSpec, WorkTimeouts
from station_runtime.contract.messages import (
    AuctionBid,
    StationRecord,
    StationStatus,
    Waiting,
    WorkPhase,
    WorkRecord,
    utcnow,
)
from station_runtime.work import phases, scoring, waiting, workflow
from station_runtime.work.policy import Action, WitnessPolicy, decide, next_check, retries_left

P = WorkPhase
ALL = list(WorkPhase)
LEGAL = {
    (P.PENDING, P.SCHEDULING), (P.PENDING, P.RUNNING),
    (P.SCHEDULING, P.ASSIGNED), (P.SCHEDULING, P.UNSCHEDULABLE), (P.SCHEDULING, P.PENDING),
    (P.UNSCHEDULABLE, P.SCHEDULING), (P.UNSCHEDULABLE, P.PENDING),
    (P.ASSIGNED, P.RUNNING), (P.ASSIGNED, P.ASSIGNED), (P.ASSIGNED, P.PENDING), (P.ASSIGNED, P.SUCCEEDED),
    (P.RUNNING, P.SUCCEEDED), (P.RUNNING, P.PENDING), (P.RUNNING, P.RUNNING),
    (P.ASSIGNED, P.AWAITING_APPROVAL), (P.ASSIGNED, P.AWAITING_INPUT),
    (P.RUNNING, P.AWAITING_APPROVAL), (P.RUNNING, P.AWAITING_INPUT),
    (P.AWAITING_APPROVAL, P.PENDING), (P.AWAITING_INPUT, P.PENDING),
} | {(src, dst) for src in ALL if not src.terminal for dst in (P.CANCELLED, P.FAILED, P.ESCALATED)}


def rec(phase: WorkPhase = P.PENDING, **kw: object) -> WorkRecord:
    spec = kw.pop("spec", WorkItemSpec(agent="echo"))
    return WorkRecord(org="o", work_id="w1", spec=spec, phase=phase, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_every_transition_is_legal_or_refused(src: WorkPhase, dst: WorkPhase) -> None:
    assert phases.allowed(src, dst) == ((src, dst) in LEGAL)
    if (src, dst) in LEGAL:
        assert phases.transition(rec(src), dst).phase == dst
    else:
        with pytest.raises(phases.IllegalTransition, match=f"{src} -> {dst} is not allowed"):
            phases.transition(rec(src), dst)


def test_transitions_stamp_times_and_requeue_clears_the_attempt() -> None:
    r = phases.transition(rec(P.SCHEDULING), P.ASSIGNED, station_id="s1", attempt_id="a1", attempt=1)
    assert r.assigned_at is not None and r.station_id == "s1"
    r = phases.transition(r, P.RUNNING)
    assert r.started_at is not None
    again = phases.transition(r, P.RUNNING)
    assert again.started_at == r.started_at
    back = phases.transition(r, P.PENDING, reason="lost")
    assert (back.station_id, back.attempt_id, back.started_at, back.attempt) == (None, None, None, 1)
    done = phases.transition(phases.transition(rec(P.SCHEDULING), P.ASSIGNED), P.SUCCEEDED)
    assert done.finished_at is not None


def station(sid: str, *, load: int = 0, cap: int = 4, agents: tuple[str, ...] = ("echo",),
            caps: tuple[str, ...] = (), labels: dict[str, str] | None = None,
            status: StationStatus = StationStatus.READY, age_s: float = 0.0) -> StationRecord:
    now = utcnow()
    return StationRecord(org="o", station_id=sid, capabilities=list(caps), labels=labels or {}, capacity=cap,
                         load=load, agents=list(agents), heartbeat_interval_s=1.0, started_at=now, status=status,
                         last_heartbeat=now - timedelta(seconds=age_s))


def test_eligibility_needs_agent_capabilities_labels_liveness_and_readiness() -> None:
    req = scoring.Requirements(agent="echo", capabilities=("text",), labels={"zone": "a"})
    assert scoring.eligible(station("s", caps=("text", "x"), labels={"zone": "a"}), req)
    assert not scoring.eligible(station("s", agents=("other",), caps=("text",), labels={"zone": "a"}), req)
    assert not scoring.eligible(station("s", caps=(), labels={"zone": "a"}), req)
    assert not scoring.eligible(station("s", caps=("text",), labels={"zone": "b"}), req)
    assert not scoring.eligible(station("s", caps=("text",), labels={"zone": "a"}, age_s=10), req)
    assert not scoring.eligible(station("s", caps=("text",), labels={"zone": "a"},
                                        status=StationStatus.DRAINING), req)


def test_ineligibility_says_why_a_station_is_not_asked() -> None:
    req = scoring.Requirements(agent="echo", capabilities=("text",), labels={"zone": "a"})
    zone_a = {"zone": "a"}
    assert scoring.ineligibility(station("s", caps=("text",), labels=zone_a), req) is None
    assert scoring.ineligibility(station("s", agents=("other",), caps=("text",), labels=zone_a),
                                 req) == "does not host 'echo'"
    assert scoring.ineligibility(station("s", caps=(), labels=zone_a), req) == "lacks ['text']"
    assert scoring.ineligibility(station("s", caps=("text",), labels={"zone": "b"}), req) == "labels do not match"
    stale = scoring.ineligibility(station("s", caps=("text",), labels=zone_a, age_s=10), req)
    assert stale is not None and stale.startswith("last heartbeat 10.")
    assert scoring.ineligibility(station("s", caps=("text",), labels=zone_a, status=StationStatus.DRAINING),
                                 req) == "draining"


def test_scores_prefer_free_capacity_then_preferred_labels() -> None:
    req = scoring.Requirements(prefer_labels={"gpu": "yes"})
    idle = scoring.score(req, capacity=4, load=0, capabilities=[], labels={})
    busy = scoring.score(req, capacity=4, load=3, capabilities=[], labels={})
    full = scoring.score(req, capacity=4, load=4, capabilities=[], labels={})
    overloaded = scoring.score(req, capacity=4, load=8, capabilities=[], labels={})
    preferred = scoring.score(req, capacity=4, load=0, capabilities=[], labels={"gpu": "yes"})
    assert preferred > idle > busy > 0 > full > overloaded
    specialist = scoring.score(scoring.Requirements(capabilities=("a",)), capacity=4, load=0, capabilities=["a"],
                               labels={})
    generalist = scoring.score(scoring.Requirements(capabilities=("a",)), capacity=4, load=0,
                               capabilities=["a", "b", "c"], labels={})
    assert specialist > generalist


def test_ranking_is_deterministic_skips_declines_and_spreads_ties() -> None:
    bids = [AuctionBid(auction_id="a", station_id=s, score=0.6, load=0, capacity=4) for s in "abcdef"]
    bids.append(AuctionBid(auction_id="a", station_id="z", score=0.9, load=0, capacity=4, declined=True))
    first = scoring.rank(bids, "w1")
    assert first == scoring.rank(list(reversed(bids)), "w1")
    assert "z" not in [b.station_id for b in first]
    winners = {scoring.rank(bids, f"w{i}")[0].station_id for i in range(50)}
    assert len(winners) >= 4
    better = [*bids, AuctionBid(auction_id="a", station_id="y", score=0.7, load=2, capacity=4)]
    assert scoring.rank(better, "w1")[0].station_id == "y"


NOW = utcnow()
POLICY = WitnessPolicy(accept_timeout_s=5, stuck_threshold_s=60, pending_grace_s=2, scheduling_timeout_s=5,
                       cancel_grace_s=10)


def ago(s: float) -> object:
    return NOW - timedelta(seconds=s)


@pytest.mark.parametrize(("record", "live", "expected"), [
    (rec(P.PENDING, updated_at=ago(1)), set(), Action.NONE),
    (rec(P.PENDING, updated_at=ago(3)), set(), Action.SCHEDULE),
    (rec(P.PENDING, retry_at=ago(-5)), set(), Action.NONE),
    (rec(P.PENDING, retry_at=ago(0.1)), set(), Action.SCHEDULE),
    (rec(P.SCHEDULING, updated_at=ago(1)), set(), Action.NONE),
    (rec(P.SCHEDULING, updated_at=ago(6)), set(), Action.SCHEDULE),
    (rec(P.UNSCHEDULABLE, retry_at=ago(-5)), set(), Action.NONE),
    (rec(P.UNSCHEDULABLE, retry_at=ago(1)), set(), Action.SCHEDULE),
    (rec(P.ASSIGNED, station_id="s1", attempt=1, assigned_at=ago(1)), {"s1"}, Action.NONE),
    (rec(P.ASSIGNED, station_id="s1", attempt=1, assigned_at=ago(6)), {"s1"}, Action.REQUEUE),
    (rec(P.RUNNING, station_id="s1", attempt=1, started_at=ago(1)), set(), Action.REQUEUE),
    (rec(P.RUNNING, station_id="s1", attempt=3, started_at=ago(1)), set(), Action.ESCALATE),
    (rec(P.RUNNING, station_id="s1", attempt=1, started_at=ago(61)), {"s1"}, Action.REQUEUE),
    (rec(P.RUNNING, station_id="s1", attempt=1, started_at=ago(61), last_progress_at=ago(1)), {"s1"},
     Action.NONE),
    (rec(P.RUNNING, station_id="s1", attempt=1, started_at=ago(20),
         spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(start_to_close_seconds=10))), {"s1"}, Action.REQUEUE),
    (rec(P.PENDING, created_at=ago(20), updated_at=ago(1),
         spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(schedule_to_start_seconds=10))), set(), Action.FAIL),
    # scheduleToClose: from creation, whatever the phase; a running attempt gets the station's grace first.
    (rec(P.UNSCHEDULABLE, created_at=ago(11), retry_at=ago(-30),
         spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(schedule_to_close_seconds=10))), set(), Action.FAIL),
    (rec(P.RUNNING, station_id="s1", attempt=1, created_at=ago(10.5), started_at=ago(1),
         spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(schedule_to_close_seconds=10))), {"s1"}, Action.NONE),
    (rec(P.RUNNING, station_id="s1", attempt=1, created_at=ago(11.5), started_at=ago(1),
         spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(schedule_to_close_seconds=10))), {"s1"}, Action.FAIL),
    # heartbeat: the item's own, shorter than the controller's stuck threshold; progress resets it.
    (rec(P.RUNNING, station_id="s1", attempt=1, started_at=ago(6), last_progress_at=ago(5),
         spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(heartbeat_seconds=4))), {"s1"}, Action.REQUEUE),
    (rec(P.RUNNING, station_id="s1", attempt=1, started_at=ago(6), last_progress_at=ago(3),
         spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(heartbeat_seconds=4))), {"s1"}, Action.NONE),
    (rec(P.PENDING, cancel_requested=True), set(), Action.CANCEL),
    (rec(P.RUNNING, station_id="s1", cancel_requested=True, updated_at=ago(1)), {"s1"}, Action.NONE),
    (rec(P.RUNNING, station_id="s1", cancel_requested=True, updated_at=ago(11)), {"s1"}, Action.CANCEL),
    (rec(P.RUNNING, station_id="s1", cancel_requested=True, updated_at=ago(1)), set(), Action.CANCEL),
    (rec(P.SUCCEEDED, finished_at=ago(50)), set(), Action.NONE),
    (rec(P.SUCCEEDED, finished_at=ago(150)), set(), Action.NONE),  # the server deletes it after the retention
])
def test_witness_decisions(record: WorkRecord, live: set[str], expected: Action) -> None:
    assert decide(record, live_stations=live, now=NOW, policy=POLICY).action == expected  # type: ignore[arg-type]


def test_the_timeouts_set_when_the_witness_looks_next() -> None:
    from station_runtime.work.policy import next_check

    close = rec(P.UNSCHEDULABLE, created_at=ago(5), retry_at=ago(-60),
                spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(schedule_to_close_seconds=10)))
    assert next_check(close, POLICY) == ago(-5)  # type: ignore[arg-type]
    beat = rec(P.RUNNING, station_id="s1", started_at=ago(10), last_progress_at=ago(1),
               spec=WorkItemSpec(agent="e", timeouts=WorkTimeouts(heartbeat_seconds=4)))
    assert next_check(beat, POLICY) == ago(-3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        WorkTimeouts(heartbeat_seconds=1)


def test_unschedulable_work_is_retried_as_soon_as_a_station_joins() -> None:
    r = rec(P.UNSCHEDULABLE, updated_at=ago(1), retry_at=ago(-30))
    assert decide(r, live_stations=set(), now=NOW, policy=POLICY).action == Action.NONE
    joined = decide(r, live_stations=set(), now=NOW, policy=POLICY, station_joined_since=ago(0))  # type: ignore[arg-type]
    assert joined.action == Action.SCHEDULE and joined.reason == "a station joined"


WF = WorkItemSpec(input={"text": "hi"}, constraints=WorkConstraints(labels={"z": "a"}), steps=[
    WorkflowStep(name="draft", agent="writer", input="write about {{input}}"),
    WorkflowStep(name="review", required_capabilities=["review"], input="review: {{ steps.draft.output }}"),
])


def test_workflow_templates() -> None:
    assert workflow.render("{{input}}!", "x", {}) == "x!"
    assert workflow.render("{{input}}", {"a": 1}, {}) == '{"a": 1}'
    assert workflow.render("a {{steps.s1.output}} b", None, {"s1": [1, 2]}) == "a [1, 2] b"
    with pytest.raises(KeyError, match="step 'nope'"):
        workflow.render("{{steps.nope.output}}", None, {})


def test_workflow_advances_step_by_step() -> None:
    parent = rec(P.PENDING, spec=WF)
    parent = workflow.advance(parent, {})
    assert parent is not None and parent.phase == P.RUNNING and parent.step_index == 0
    assert workflow.advance(parent, {0: None}) is None and workflow.ready(parent) == [0]
    child = rec(P.RUNNING, spec=workflow.step_spec(parent, WF.steps[0]))
    assert child.spec.input == 'write about {"text": "hi"}' and child.spec.constraints.labels == {"z": "a"}
    assert workflow.advance(parent, {0: child}) is None
    parent = workflow.advance(parent, {0: child.model_copy(update={"phase": P.SUCCEEDED, "result": "DRAFT"})})
    assert parent is not None and parent.step_index == 1 and parent.step_outputs == {"draft": "DRAFT"}
    assert workflow.ready(parent) == [1] and workflow.step_spec(parent, WF.steps[1]).input == "review: DRAFT"
    done = workflow.advance(parent, {1: child.model_copy(update={"phase": P.SUCCEEDED, "result": "OK"})})
    assert done is not None and done.phase == P.SUCCEEDED and done.result == "OK"
    failed = workflow.advance(parent, {1: child.model_copy(update={"phase": P.ESCALATED, "reason": "lost"})})
    assert failed is not None and failed.phase == P.FAILED and "review" in failed.reason


def _graph(*steps: dict[str, object]) -> WorkItemSpec:
    return WorkItemSpec.model_validate({"steps": [{"agent": "a", **s} for s in steps], "input": "in"})


def test_a_graph_runs_branches_together_and_joins_them() -> None:
    spec = _graph({"name": "fetch", "dependsOn": []}, {"name": "left", "dependsOn": ["fetch"]},
                  {"name": "right", "dependsOn": ["fetch"], "maxRetries": 5, "timeouts": {"startToCloseSeconds": 9}},
                  {"name": "join", "dependsOn": ["left", "right"],
                   "input": "{{steps.left.output}}+{{steps.right.output}}"})
    parent = workflow.advance(rec(P.PENDING, spec=spec), {})
    assert parent is not None and workflow.ready(parent) == [0]
    ok = rec(P.SUCCEEDED)
    parent = workflow.advance(parent, {0: ok.model_copy(update={"result": "F"})})
    assert parent is not None and workflow.ready(parent) == [1, 2]  # both branches at once
    right = workflow.step_spec(parent, spec.steps[2])
    assert right.max_retries == 5 and right.timeouts.start_to_close_seconds == 9
    assert workflow.step_spec(parent, spec.steps[1]).max_retries == spec.max_retries
    parent = workflow.advance(parent, {1: ok.model_copy(update={"result": "L"}), 2: rec(P.RUNNING)})
    assert parent is not None and workflow.ready(parent) == [2]  # the join waits for both
    parent = workflow.advance(parent, {2: ok.model_copy(update={"result": "R"})})
    assert parent is not None and workflow.ready(parent) == [3]
    assert workflow.step_spec(parent, spec.steps[3]).input == "L+R" and parent.progress_message == "3/4 steps done"
    done = workflow.advance(parent, {3: ok.model_copy(update={"result": "LR"})})
    assert done is not None and done.phase == P.SUCCEEDED and done.result == "LR" and done.step_index == 4


@pytest.mark.parametrize(("steps", "said"), [
    ([{"name": "a", "dependsOn": ["b"]}, {"name": "b", "dependsOn": ["a"]}], "in a cycle"),
    ([{"name": "a", "dependsOn": ["zz"]}], "'zz', which is not a step"),
    ([{"name": "a", "dependsOn": ["a"]}], "depends on itself"),
    ([{"name": "a", "dependsOn": []}, {"name": "b", "dependsOn": [], "input": "{{steps.a.output}}"}],
     "does not depend on it"),
])
def test_a_graph_that_cannot_run_is_refused_with_why(steps: list[dict[str, object]], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        _graph(*steps)


def test_steps_without_depends_on_run_in_order_as_before() -> None:
    spec = _graph({"name": "a"}, {"name": "b", "input": "{{steps.a.output}}"}, {"name": "c", "dependsOn": []})
    parent = workflow.advance(rec(P.PENDING, spec=spec), {})
    assert parent is not None and workflow.ready(parent) == [0, 2]


def test_child_ids_are_deterministic_and_bounded() -> None:
    long_id = "x" * 64
    assert workflow.child_id(long_id, 3) == workflow.child_id(long_id, 3)
    assert len(workflow.child_id(long_id, 12)) <= 64
    assert workflow.child_id("a", 0) != workflow.child_id("b", 0)


def test_a_perfect_score_is_the_best_any_station_can_bid() -> None:
    from station_runtime.work.scoring import perfect_score

    for req in (scoring.Requirements(agent="echo"), scoring.Requirements(capabilities=("a",)),
                scoring.Requirements(prefer_labels={"gpu": "yes"}),
                scoring.Requirements(capabilities=("a",), prefer_labels={"gpu": "yes"})):
        best = scoring.score(req, capacity=4, load=0, capabilities=req.capabilities, labels=dict(req.prefer_labels))
        assert best == perfect_score(req)
        assert scoring.score(req, capacity=4, load=1, capabilities=[*req.capabilities, "b"], labels={}) < best


@pytest.mark.parametrize(("beats_late", "answers_ping", "expected"), [
    (1.0, True, False),  # on time
    (1.6, True, True),  # late: worth a probe
    (2.9, True, True),
    (3.1, True, True),  # past three beats: probed too (an answer proves it there, its beats held up)
    (1.6, False, False),  # an older station that does not answer pings is never probed
])
def test_a_station_is_probed_once_overdue(beats_late: float, answers_ping: bool,
                                                              expected: bool) -> None:
    from station_runtime.routing import overdue

    now = utcnow()
    beat = now - timedelta(seconds=2.0 * beats_late)
    record = StationRecord(org="o", station_id="s", capacity=1, heartbeat_interval_s=2.0, started_at=beat,
                           last_heartbeat=beat, answers_ping=answers_ping)
    assert overdue(record, now) is expected


def test_a_workflow_step_gets_what_is_left_of_the_workflows_deadline() -> None:
    from station_runtime.work.workflow import DeadlinePassed, step_spec

    spec = WorkItemSpec(input="x", timeouts=WorkTimeouts(schedule_to_close_seconds=10), steps=[
        WorkflowStep(name="a", agent="e", input="{{input}}")])
    now = utcnow()  # not NOW: step_spec reads the clock itself
    parent = rec(P.RUNNING, spec=spec, created_at=now - timedelta(seconds=4))
    left = step_spec(parent, spec.steps[0]).timeouts.schedule_to_close_seconds
    assert left is not None and 5.5 < left <= 6.0
    with pytest.raises(DeadlinePassed, match="not finished within scheduleToClose 10s"):
        step_spec(rec(P.RUNNING, spec=spec, created_at=now - timedelta(seconds=11)), spec.steps[0])


# --- waiting for a person ---------------------------------------------------------------------------------------


def _waiting(kind: str = "approval", deadline_s: float | None = None, **kw: object) -> WorkRecord:
    now = utcnow()
    w = Waiting(kind=kind, key="w1/2", tool="pay", arguments='{"n": 1}', question="why?" if kind == "input" else "",
                requested_at=now, deadline_at=None if deadline_s is None else now + timedelta(seconds=deadline_s))
    phase = P.AWAITING_APPROVAL if kind == "approval" else P.AWAITING_INPUT
    return rec(P.RUNNING, attempt=1, attempt_id="a1", station_id="s1", **kw).model_copy(
        update={"phase": phase, "waiting": w, "station_id": None, "attempt_id": None, "suspensions": 1})


def test_suspending_frees_the_station_and_spends_no_retry() -> None:
    running = rec(P.RUNNING, attempt=1, attempt_id="a1", station_id="s1", spec=WorkItemSpec(agent="a",
                                                                                            max_retries=1))
    suspended = phases.transition(running, P.AWAITING_APPROVAL, waiting=_waiting().waiting)
    assert suspended.station_id is None and suspended.attempt_id is None and suspended.suspensions == 1
    resumed = phases.transition(suspended, P.PENDING).model_copy(update={"attempt": 2})
    assert resumed.waiting is None and resumed.retries == 0
    # The resumed attempt may still be retried once: the suspended one spent nothing.
    assert retries_left(resumed) and not retries_left(resumed.model_copy(update={"suspensions": 0}))


def test_a_waiting_run_is_left_alone_until_its_deadline_then_the_deadline_decides() -> None:
    policy = WitnessPolicy()
    now = utcnow()
    patient = _waiting()
    assert decide(patient, live_stations=[], now=now + timedelta(days=30), policy=policy).action == Action.NONE
    assert next_check(patient, policy) is None
    hurried = _waiting(deadline_s=5)
    assert hurried.waiting is not None and next_check(hurried, policy) == hurried.waiting.deadline_at
    assert decide(hurried, live_stations=[], now=now, policy=policy).action == Action.NONE
    late = decide(hurried, live_stations=[], now=now + timedelta(seconds=6), policy=policy)
    assert late.action == Action.TIME_OUT_WAIT and "approval of pay" in late.reason
    timed = waiting.timed_out(hurried)
    assert timed.phase == P.PENDING and timed.decisions["w1/2"].approved is False
    assert decide(rec(P.PENDING, cancel_requested=True).model_copy(update={"phase": P.AWAITING_INPUT}),
                  live_stations=[], now=now, policy=policy).action == Action.CANCEL


def test_schedule_to_start_does_not_apply_after_a_suspension() -> None:
    spec = WorkItemSpec(agent="a", timeouts=WorkTimeouts(schedule_to_start_seconds=1))
    resumed = rec(P.PENDING, spec=spec, suspensions=1, created_at=utcnow() - timedelta(hours=1), retry_at=utcnow())
    assert decide(resumed, live_stations=[], now=utcnow(), policy=WitnessPolicy()).action == Action.SCHEDULE


def test_a_decision_must_fit_what_the_run_waits_for() -> None:
    approval, question = _waiting("approval"), _waiting("input")
    with pytest.raises(waiting.NotWaiting, match="approve or reject it"):
        waiting.decide(approval, approved=True, reply="yes")
    with pytest.raises(waiting.NotWaiting, match="lattice work reply"):
        waiting.decide(question, approved=True)
    with pytest.raises(waiting.NotWaiting, match="not waiting for a person"):
        waiting.decide(rec(P.RUNNING), approved=True)
    done = waiting.decide(question, approved=True, reply="blue", by="ann")
    assert done.phase == P.PENDING and done.decisions["w1/2"].reply == "blue" and "answered by ann" in done.reason
    rejected = waiting.decide(approval, approved=False, reason="no")
    assert rejected.decisions["w1/2"].approved is False and rejected.retry_at is not None


def test_a_jetstream_503_is_logged_with_what_it_may_mean() -> None:
    import nats.errors
    import nats.js.errors

    from station_runtime.natsio.retry import failure_hint

    hint = failure_hint(nats.js.errors.ServiceUnavailableError())
    assert "JetStream does not answer" in hint and "natsLimits.jetstreamDiskBytes" in hint
    assert failure_hint(nats.errors.TimeoutError()) == "TimeoutError"


def test_assigned_work_a_later_heartbeat_lists_is_left_to_its_station_past_the_accept_timeout() -> None:
    from station_runtime.work.policy import Holding

    now = utcnow()
    assigned = now - timedelta(seconds=10)
    r = rec(P.ASSIGNED, station_id="s1", attempt_id="a1", attempt=1, assigned_at=assigned)
    policy = WitnessPolicy(accept_timeout_s=5.0)

    def verdict(holdings: dict[str, Holding] | None) -> Action:
        return decide(r, live_stations={"s1"}, now=now, policy=policy, holdings=holdings).action

    assert verdict(None) == Action.REQUEUE  # nobody says it has it
    assert verdict({"s1": Holding(now - timedelta(seconds=1), frozenset({"w1"}))}) == Action.NONE  # queued there
    # A heartbeat from before the assignment proves nothing; nor does another station holding it, or s1 holding
    # other work.
    assert verdict({"s1": Holding(assigned - timedelta(seconds=1), frozenset({"w1"}))}) == Action.REQUEUE
    assert verdict({"s2": Holding(now, frozenset({"w1"}))}) == Action.REQUEUE
    assert verdict({"s1": Holding(now, frozenset({"w2"}))}) == Action.REQUEUE
    # A lost station's holdings do not keep its work.
    assert decide(r, live_stations=set(), now=now, policy=policy,
                  holdings={"s1": Holding(now, frozenset({"w1"}))}).action == Action.REQUEUE


@pytest.mark.parametrize(("age_s", "expected"), [(None, False), (0.01, False), (0.2, False), (0.3, True), (9, True)])
def test_a_run_claims_before_its_agent_starts_only_when_its_assignment_is_old(age_s: float | None,
                                                                               expected: bool) -> None:
    from station_runtime.station.admission import claim_first

    now = utcnow()
    assigned = None if age_s is None else now - timedelta(seconds=age_s)
    assert claim_first(assigned_at=assigned, now=now) is expected


def test_an_auction_whose_winner_holds_the_work_is_not_taken_over() -> None:
    from station_runtime.work.policy import Holding

    now = utcnow()
    began = now - timedelta(seconds=10)
    r = rec(P.SCHEDULING, updated_at=began)
    policy = WitnessPolicy(scheduling_timeout_s=5.0)

    def verdict(holdings: dict[str, Holding] | None) -> Action:
        return decide(r, live_stations={"s1"}, now=now, policy=policy, holdings=holdings).action

    assert verdict(None) == Action.SCHEDULE
    assert verdict({"s1": Holding(now, frozenset({"w1"}))}) == Action.NONE
    assert verdict({"s1": Holding(began - timedelta(seconds=1), frozenset({"w1"}))}) == Action.SCHEDULE
    assert verdict({"s1": Holding(now, frozenset({"w2"}))}) == Action.SCHEDULE
    # Held by a station that is lost since: taken over.
    assert decide(r, live_stations=set(), now=now, policy=policy,
                  holdings={"s1": Holding(now, frozenset({"w1"}))}).action == Action.SCHEDULE


def test_work_a_restarted_station_did_not_resume_is_requeued_at_once() -> None:
    from station_runtime.work.policy import Holding

    now = utcnow()
    assigned = now - timedelta(seconds=3)
    r = rec(P.RUNNING, station_id="s1", attempt_id="a1", attempt=1, assigned_at=assigned,
            started_at=assigned, last_progress_at=now)
    policy = WitnessPolicy()

    def verdict(held: Holding) -> Action:
        return decide(r, live_stations={"s1"}, now=now, policy=policy, holdings={"s1": held}).action

    restarted = now - timedelta(seconds=1)
    assert verdict(Holding(now, frozenset(), restarted)) == Action.REQUEUE  # its new run does not hold it
    assert verdict(Holding(now, frozenset({"w1"}), restarted)) == Action.NONE  # resumed
    assert verdict(Holding(now, frozenset(), assigned - timedelta(seconds=5))) == Action.NONE  # same run as before

"""Ids that become subject tokens are validated, and every subject is built from validated ids."""

from __future__ import annotations

import pytest

from station_runtime.contract import subjects
from station_runtime.contract.errors import InvalidIdError
from station_runtime.contract.ids import validate_id


@pytest.mark.parametrize("value", ["a", "acme", "station-0", "Worker_2", "x" * 64, "0abc"])
def test_valid_ids_pass_unchanged(value: str) -> None:
    assert validate_id(value, "station id") == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "must not be empty"),
        ("a.b", "'.'"),
        ("a*", "'*'"),
        ("a>", "'>'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("x" * 65, "65 characters long, the limit is 64"),
        ("-lead", "must start with a letter or digit"),
        ("ümlaut", "only letters, digits"),
    ],
)
def test_invalid_ids_are_rejected_naming_the_value(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdError) as exc:
        validate_id(value, "station id")
    assert reason in str(exc.value)
    assert repr(value) in str(exc.value)
    assert "station id" in str(exc.value)


def test_non_string_ids_are_rejected() -> None:
    with pytest.raises(InvalidIdError, match="must be a string"):
        validate_id(42, "org id")


def test_subjects_follow_the_contract() -> None:
    assert subjects.presence("acme", "heartbeat") == "lattice.v1.acme.presence.heartbeat"
    assert subjects.presence_all("acme") == "lattice.v1.acme.presence.*"
    assert subjects.agent_invoke("acme", "s1") == "lattice.v1.acme.station.s1.agent.invoke"
    assert subjects.work_assign("acme", "s1") == "lattice.v1.acme.station.s1.work.assign"
    assert subjects.station_auction("acme", "s1") == "lattice.v1.acme.station.s1.auction.request"
    assert subjects.work_update("acme", "w1", "record") == "lattice.v1.acme.work.w1.record"
    assert subjects.work_record_republish("acme") == ("$KV.lattice-acme-work.*",
                                                      "lattice.v1.acme.work.{{wildcard(1)}}.record")
    assert subjects.work_update("acme", "w1", "progress") == "lattice.v1.acme.work.w1.progress"
    assert subjects.work_updates_all("acme") == "lattice.v1.acme.work.*.*"
    assert subjects.event("acme", "work", "succeeded") == "lattice.v1.acme.events.work.succeeded"
    assert subjects.events_all("acme") == "lattice.v1.acme.events.>"
    assert subjects.bucket("acme", "stations") == "lattice-acme-stations"
    assert subjects.events_stream("acme") == "lattice-acme-events"
    # The wildcard forms, for subscriptions and permissions.
    assert subjects.station_all("acme", "s1") == "lattice.v1.acme.station.s1.>"
    assert subjects.work_progress_all("acme") == "lattice.v1.acme.work.*.progress"
    assert subjects.events_category("acme", "work") == "lattice.v1.acme.events.work.*"
    assert subjects.inbox_all(subjects.station_inbox_prefix("s1")) == "_INBOX_s1.>"
    # JetStream names.
    assert subjects.results_bucket("acme") == "lattice-acme-work-results"
    assert subjects.kv_key("lattice-acme-work", "w1") == "$KV.lattice-acme-work.w1"
    assert subjects.js_direct_get("KV_b") == "$JS.API.DIRECT.GET.KV_b"
    assert subjects.js_direct_get("KV_b", "$KV.b.k") == "$JS.API.DIRECT.GET.KV_b.$KV.b.k"
    assert subjects.sys_account_claims("*", "LOOKUP") == "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP"


@pytest.mark.parametrize(("pattern", "subject", "match"), [
    ("a.b", "a.b", True), ("a.b", "a.c", False), ("a.*", "a.b", True), ("a.*", "a.b.c", False),
    ("a.>", "a.b", True), ("a.>", "a.b.c", True), ("a.>", "a", False), ("*.b", "a.b", True),
    ("a.*.c", "a.b.c", True), ("a.*.c", "a.b.d", False), ("a.b", "a.b.c", False), (">", "x", True),
])
def test_subject_patterns_match_as_nats_does(pattern: str, subject: str, match: bool) -> None:
    assert subjects.matches(pattern, subject) is match


def test_subjects_parse_back() -> None:
    assert subjects.parse_work_update(subjects.work_update("acme", "w-1", "record")) == ("w-1", "record")
    assert subjects.parse_work_update(subjects.work_update("work", "w1", "progress")) == ("w1", "progress")
    assert subjects.parse_work_update("lattice.v1.acme.work.w1.other") is None
    assert subjects.parse_work_update("lattice.v1.acme.presence.heartbeat") is None
    assert subjects.parse_work_update("elsewhere.work.w1.record") is None


@pytest.mark.parametrize("builder", [
    lambda bad: subjects.agent_invoke(bad, "s1"),
    lambda bad: subjects.agent_invoke("acme", bad),
    lambda bad: subjects.work_update("acme", bad, "progress"),
    lambda bad: subjects.bucket(bad, "work"),
])
@pytest.mark.parametrize("bad", ["a.b", "*", ">", "", "a b"])
def test_builders_refuse_ids_that_would_change_the_subject(builder: object, bad: str) -> None:
    with pytest.raises(InvalidIdError):
        builder(bad)  # type: ignore[operator]


def test_parse_org() -> None:
    assert subjects.parse_org("lattice.v1.acme.presence.heartbeat") == "acme"
    assert subjects.parse_org("other.v1.acme.x") is None
    assert subjects.parse_org("lattice") is None

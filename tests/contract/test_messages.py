"""Message models: schema tagging, round trips, and rejection of malformed or oversized payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from station_runtime.api.models import WorkItemSpec
from station_runtime.contract.codec import decode, decode_invoke_reply, encode
from station_runtime.contract.errors import DecodeError, PayloadTooLargeError
from station_runtime.contract.events import CloudEvent, make_event
from station_runtime.contract.messages import (
    AuctionBid,
    AuctionRequest,
    ErrorCode,
    Goodbye,
    Heartbeat,
    InvokeError,
    InvokeRequest,
    InvokeResult,
    StationRecord,
    WorkPhase,
    WorkProgress,
    WorkRecord,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def record() -> StationRecord:
    return StationRecord(org="acme", station_id="s1", capabilities=["text"], labels={"zone": "a"}, capacity=4,
                         load=1, agents=["echo"], version="0.1.0", heartbeat_interval_s=2.0, started_at=NOW,
                         last_heartbeat=NOW)


@pytest.mark.parametrize("message", [
    record(),
    Heartbeat(station_id="s1", seq=3, load=1, capacity=4, sent_at=NOW),
    Goodbye(station_id="s1", reason="bye", sent_at=NOW),
    InvokeRequest(request_id="r1", agent="echo", input={"a": [1, 2]}, timeout_s=3),
    InvokeResult(request_id="r1", station_id="s1", agent="echo", output="x", started_at=NOW, finished_at=NOW),
    InvokeError(request_id="r1", station_id="s1", code=ErrorCode.BUSY, message="full"),
    WorkRecord(org="acme", work_id="w1", spec=WorkItemSpec(agent="echo", input="hi"), created_at=NOW,
               updated_at=NOW),
    WorkProgress(work_id="w1", attempt_id="a1", station_id="s1", percent=50, sent_at=NOW),
    AuctionRequest(auction_id="a1", work_id="w1", capabilities=["text"]),
    AuctionBid(auction_id="a1", station_id="s1", score=0.5, load=1, capacity=4),
])
def test_every_message_round_trips_and_carries_its_schema(message: object) -> None:
    data = encode(message)  # type: ignore[arg-type]
    body = json.loads(data)
    assert body["schema"] == f"{type(message).SCHEMA}/v1"  # type: ignore[attr-defined]
    assert decode(data, type(message)) == message  # type: ignore[arg-type]


def test_a_message_of_another_schema_is_rejected() -> None:
    data = encode(Goodbye(station_id="s1"))
    with pytest.raises(DecodeError, match=r"expected a 'lattice\.presence\.heartbeat' message"):
        decode(data, Heartbeat)


def test_newer_versions_with_extra_fields_are_accepted() -> None:
    body = json.loads(encode(Goodbye(station_id="s1")))
    body["schema"] = "lattice.presence.goodbye/v7"
    body["new_field"] = {"added": "later"}
    assert decode(json.dumps(body).encode(), Goodbye).station_id == "s1"


@pytest.mark.parametrize(("data", "fragment"), [
    (b"not json", "invalid InvokeRequest"),
    (b"[]", "invalid InvokeRequest"),
    (b'{"schema": "lattice.invoke.request/v1"}', "request_id: Field required"),
    (b'{"schema": "lattice.invoke.request/vX", "request_id": "r"}', "not of the form"),
    (b'{"request_id": "r", "agent": "a.b"}', "must not contain '.'"),
    (b'{"request_id": "r", "timeout_s": -1}', "timeout_s"),
])
def test_malformed_payloads_raise_decode_errors_that_say_what_is_wrong(data: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError) as exc:
        decode(data, InvokeRequest)
    assert fragment in str(exc.value)
    assert exc.value.data == data[:1024]


def test_oversized_payloads_are_refused_before_parsing() -> None:
    big = b'{"request_id": "' + b"x" * 2000 + b'"}'
    with pytest.raises(PayloadTooLargeError) as exc:
        decode(big, InvokeRequest, max_bytes=1000)
    assert exc.value.size == len(big) and exc.value.limit == 1000


def test_invoke_replies_decode_to_result_or_error() -> None:
    ok = InvokeResult(request_id="r", station_id="s", agent="a", output=[1], started_at=NOW, finished_at=NOW)
    err = InvokeError(request_id="r", code=ErrorCode.NOT_FOUND, message="nope")
    assert decode_invoke_reply(encode(ok)) == ok
    assert decode_invoke_reply(encode(err)) == err
    with pytest.raises(DecodeError):
        decode_invoke_reply(b'{"schema": "lattice.presence.goodbye/v1", "station_id": "s"}')


def test_error_codes_say_whether_to_retry() -> None:
    assert ErrorCode.BUSY.retryable and ErrorCode.DRAINING.retryable
    assert not ErrorCode.BAD_REQUEST.retryable and not ErrorCode.AGENT_ERROR.retryable


def test_terminal_phases() -> None:
    assert {p for p in WorkPhase if p.terminal} == {WorkPhase.SUCCEEDED, WorkPhase.FAILED, WorkPhase.CANCELLED,
                                                    WorkPhase.ESCALATED}


def test_cloudevents_are_spec_shaped() -> None:
    event = make_event("work", "succeeded", org="acme", source="station/s1", subject="w1", data={"a": 1},
                       traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    body = json.loads(event.model_dump_json(exclude_none=True))
    assert body["specversion"] == "1.0"
    assert body["type"] == "dev.lattice.work.succeeded"
    assert body["source"] == "/lattice/acme/station/s1"
    assert body["subject"] == "w1" and body["data"] == {"a": 1} and body["id"]
    assert CloudEvent.model_validate_json(json.dumps(body)).short_type == "work.succeeded"
    with pytest.raises(ValueError, match="unknown work event type 'exploded'"):
        make_event("work", "exploded", org="acme", source="x")

"""Property tests over every decoder that reads input from outside: wire messages (random bytes, random JSON,
valid messages with one field replaced by anything), manifests and `.prompt` files, the creds files and JWTs of
NATS auth. Whatever comes in, the decoder either returns a valid object or raises its own error type, saying
what is wrong; nothing else escapes, nothing hangs (each example is bounded in size and time)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from station_runtime.api.dotprompt import PromptError, parse_prompt
from station_runtime.api.loader import ManifestError, load_manifests
from station_runtime.contract import messages as m
from station_runtime.contract.codec import decode, decode_invoke_reply
from station_runtime.contract.errors import DecodeError
from station_runtime.contract.events import CloudEvent
from station_runtime.contract.specs import WorkItemSpec
from station_runtime.natsauth.claims import parse_creds
from station_runtime.natsauth.errors import JwtError
from station_runtime.natsauth.jwt import verify

pytestmark = pytest.mark.timeout(120)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Every message that crosses NATS or sits in KV, with a valid example of each.
NOW = "2026-12-03T12:00:00Z"
SPEC = {"agent": "a", "input": "x"}
VALID: dict[type[BaseModel], dict[str, Any]] = {
    m.StationRecord: {"org": "o", "station_id": "s1", "capacity": 4, "started_at": NOW, "last_heartbeat": NOW,
                      "heartbeat_interval_s": 2},
    m.Heartbeat: {"org": "o", "station_id": "s1", "load": 1, "capacity": 4, "seq": 1},
    m.Goodbye: {"station_id": "s1", "reason": "bye"},
    m.InvokeRequest: {"request_id": "r1", "agent": "a", "input": "x"},
    m.InvokeResult: {"request_id": "r1", "station_id": "s1", "agent": "a", "output": "y", "started_at": NOW,
                     "finished_at": NOW},
    m.InvokeError: {"request_id": "r1", "station_id": "s1", "code": "busy", "message": "full"},
    m.WorkRecord: {"org": "o", "work_id": "w1", "spec": SPEC, "phase": "Running", "attempt": 1, "attempt_id": "a1",
                   "station_id": "s1", "waiting": {"kind": "approval", "key": "w1/1"},
                   "decisions": {"w1/1": {"approved": True}}},
    m.WorkCancel: {"work_id": "w1", "attempt_id": "a1", "reason": "x"},
    m.WorkAccept: {"work_id": "w1", "attempt_id": "a1", "station_id": "s1", "accepted": True},
    m.WorkProgress: {"work_id": "w1", "attempt_id": "a1", "station_id": "s1", "percent": 50, "tokens": "hi"},
    m.AuctionRequest: {"auction_id": "u1", "work_id": "w1", "agent": "a"},
    m.AuctionBid: {"auction_id": "u1", "station_id": "s1", "load": 0, "capacity": 4, "score": 1.0},
    m.JournalEntry: {"work_id": "w1", "n": 1, "kind": "turn", "tool_calls": [{"id": "c", "name": "t",
                                                                              "arguments": {}}]},
    m.AgentDefinition: {"org": "o", "name": "a", "spec": {"model": {"provider": "echo"}}},
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25)


def test_every_valid_example_decodes() -> None:
    for model, example in VALID.items():
        assert decode(json.dumps(example).encode(), model) is not None, model.__name__


@pytest.mark.parametrize("model", list(VALID), ids=lambda t: t.__name__)
@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_are_refused_with_a_decode_error(model: type[BaseModel], data: bytes) -> None:
    try:
        decode(data, model)
    except DecodeError as exc:
        assert str(exc)


@pytest.mark.parametrize("model", list(VALID), ids=lambda t: t.__name__)
@FUZZ
@given(data=st.data(), value=json_values, drop=st.booleans())
def test_a_message_with_any_one_field_changed_decodes_or_says_what_is_wrong(
        model: type[BaseModel], data: st.DataObject, value: Any, drop: bool) -> None:
    example = dict(VALID[model])
    # Mostly a field the message has (a wrong type, a value out of bounds), sometimes one it does not.
    key = data.draw(st.sampled_from(sorted({*example, *model.model_fields})) | st.text(max_size=12))
    if drop:
        example.pop(key, None)
    else:
        example[key] = value
    try:
        decoded = decode(json.dumps(example).encode(), model)
    except DecodeError as exc:
        assert "invalid" in str(exc) or "larger" in str(exc)
        return
    assert isinstance(decoded, model)
    json.loads(decoded.model_dump_json(by_alias=True))  # what decoded encodes again


@FUZZ
@given(data=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_invoke_replies_and_events_decode_or_refuse(data: bytes) -> None:
    try:
        decode_invoke_reply(data)
    except DecodeError:
        pass
    try:
        decode(data, CloudEvent)
    except DecodeError:
        pass


@FUZZ
@given(doc=json_values, kind=st.sampled_from(["Agent", "Station", "WorkItem", "ToolServer", "Nonsense"]))
def test_manifests_load_or_say_where_they_are_wrong(doc: Any, kind: str) -> None:
    text = json.dumps({"apiVersion": "lattice.station.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"},
                       "spec": doc})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.yaml"
        path.write_text(text)
        try:
            load_manifests(path)
        except ManifestError as exc:
            assert "m.yaml" in str(exc)


@FUZZ
@given(steps=st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["a", "b", "c", "d"]), "agent": st.just("x"),
    "dependsOn": st.none() | st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=3),
    "input": st.sampled_from(["{{input}}", "{{steps.a.output}}", "{{steps.d.output}}"])}), max_size=5))
def test_any_workflow_graph_is_accepted_only_if_it_can_run(steps: list[dict[str, Any]]) -> None:
    from station_runtime.contract import graph

    try:
        spec = WorkItemSpec.model_validate({"steps": steps, "input": "i"})
    except ValueError:
        return
    done: set[str] = set()
    while len(done) < len(spec.steps):  # an accepted graph runs to the end, every step once
        ready = graph.ready(spec.steps, done)
        assert ready, "an accepted graph got stuck"
        done.update(spec.steps[i].name for i in ready)


@FUZZ
@given(front=st.dictionaries(st.sampled_from(["model", "config", "input", "output", "tools", "lattice", "x"]),
                             json_values, max_size=5),
       body=st.text(max_size=200))
def test_prompt_files_parse_or_say_what_is_wrong(front: dict[str, Any], body: str) -> None:
    import yaml

    text = f"---\n{yaml.safe_dump(front)}---\n{body}"
    try:
        parse_prompt(text, "fuzzed")
    except PromptError as exc:
        assert str(exc)


@FUZZ
@given(text=st.text(max_size=300), token=st.text(max_size=300))
def test_creds_and_jwts_parse_or_are_refused(text: str, token: str) -> None:
    try:
        parse_creds(text)
    except ValueError as exc:
        assert "creds" in str(exc)
    try:
        verify(token)
    except (JwtError, ValueError):
        pass

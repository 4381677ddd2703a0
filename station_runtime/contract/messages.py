"""Every message that crosses NATS or sits in KV, as frozen pydantic models.

Each carries ``schema`` = ``"<name>/v<version>"``. Readers reject a message of another name and accept any
version of the right name, ignoring fields they do not know: a newer station can talk to an older one as long as
changes are additive, and a breaking change gets a new name.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .ids import AgentName, Capability, OrgId, StationId, WorkId
from .specs import AgentSpec, Budget, McpServerSpec, WorkItemSpec


def utcnow() -> datetime:
    return datetime.now(UTC)


class WireModel(BaseModel):
    # Non-finite numbers have no JSON form: refused at the edge rather than stored as null and unreadable after.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, allow_inf_nan=False)

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int] = 1

    schema_: str = Field(default="", alias="schema", validate_default=True)

    @field_validator("schema_", mode="before")
    @classmethod
    def _check_schema(cls, value: object) -> str:
        if value in ("", None):
            return f"{cls.SCHEMA}/v{cls.VERSION}"
        if not isinstance(value, str):
            raise ValueError("schema must be a string like 'name/v1'")
        name, sep, version = value.rpartition("/v")
        if not sep or not version.isdigit():
            raise ValueError(f"schema {value!r} is not of the form 'name/v<version>'")
        if name != cls.SCHEMA:
            raise ValueError(f"expected a {cls.SCHEMA!r} message, got {name!r}")
        return value


# --- presence --------------------------------------------------------------------------------------------


class StationStatus(enum.StrEnum):
    READY = "ready"
    #: Not taking new work, finishing what it has (SIGTERM received).
    DRAINING = "draining"


#: Work ids a heartbeat lists at most (a station record stays well inside the stations bucket's 64 KiB values).
MAX_HELD_LISTED = 1024


class StationRecord(WireModel):
    """A station's entry in the ``stations`` KV bucket (key: station id); refreshed on every heartbeat."""

    SCHEMA = "lattice.station.record"

    org: OrgId
    station_id: StationId
    capabilities: list[Capability] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    capacity: int = Field(ge=0)
    load: int = Field(default=0, ge=0)
    agents: list[AgentName] = Field(default_factory=list)
    version: str = ""
    status: StationStatus = StationStatus.READY
    heartbeat_interval_s: float = Field(gt=0)
    started_at: datetime
    last_heartbeat: datetime
    pid: int | None = None
    hostname: str | None = None
    #: Answers ``station.{id}.ping`` (older stations do not: they are never probed).
    answers_ping: bool = False
    #: Agents selected for this station that it could not load (a module that does not import, a bad key
    #: file), with why: so that `lattice get agents`, the Agent's status and an auction can say it.
    agent_errors: dict[AgentName, str] = Field(default_factory=dict)
    #: The tools each hosted agent has, as discovered when it loaded (MCP servers' tools by name, function and
    #: lattice tools): `lattice get agents -o wide` and the Agent's status list them.
    agent_tools: dict[AgentName, list[str]] = Field(default_factory=dict)
    #: The work this station has accepted and not finished, running or queued for a slot, oldest first (at most
    #: :data:`MAX_HELD_LISTED`). The witness leaves Assigned work that a heartbeat newer than the assignment lists
    #: to the station (it is queued there; the station's liveness is watched instead) rather than requeueing it
    #: when it did not start within the accept timeout: a queue deeper than that timeout would otherwise have
    #: every queued item requeued, and run twice, or never finish at all.
    holding: list[WorkId] = Field(default_factory=list, max_length=MAX_HELD_LISTED)
    #: The station lists what it holds in ``holding`` (older stations do not: the witness does not go by it).
    lists_holding: bool = False

    def free(self) -> int:
        return max(self.capacity - self.load, 0)

    def age_s(self, now: datetime | None = None) -> float:
        return ((now or utcnow()) - self.last_heartbeat).total_seconds()


class PresenceAnnounce(WireModel):
    SCHEMA = "lattice.presence.announce"

    record: StationRecord


class Heartbeat(WireModel):
    SCHEMA = "lattice.presence.heartbeat"

    station_id: StationId
    seq: int = Field(ge=0)
    load: int = Field(ge=0)
    capacity: int = Field(ge=0)
    status: StationStatus = StationStatus.READY
    sent_at: datetime = Field(default_factory=utcnow)


class Goodbye(WireModel):
    SCHEMA = "lattice.presence.goodbye"

    station_id: StationId
    reason: str = ""
    sent_at: datetime = Field(default_factory=utcnow)


# --- agents ----------------------------------------------------------------------------------------------


class AgentDefinition(WireModel):
    """An agent in the org's ``agents`` KV bucket (key: agent name). Holds no secret: API keys are named by
    env var, file or Secret reference and resolved on the station."""

    SCHEMA = "lattice.agent.definition"

    org: OrgId
    name: AgentName
    labels: dict[str, str] = Field(default_factory=dict)
    spec: AgentSpec
    generation: int = 1
    #: The ToolServers the agent's tools name, resolved by whoever published it (``lattice up``, the operator):
    #: a station needs nothing but the definition to load the agent. A name missing here is a load error.
    tool_servers: dict[AgentName, McpServerSpec] = Field(default_factory=dict)


# --- usage ------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    """What a run spent: tokens of every model call (cache reads and writes apart), their cost when the model has
    a price, and how many model calls, turns and tool calls it made. Added up with ``+``; children's usage is
    kept apart in ``delegated`` (their records have their own)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cached_input_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    model_calls: int = Field(default=0, ge=0)
    tool_calls: int = Field(default=0, ge=0)
    #: Usage of work this run delegated through the lattice (counted against its budget too).
    delegated_tokens: int = Field(default=0, ge=0)
    delegated_cost_usd: float = Field(default=0.0, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def budget_tokens(self) -> int:
        """Tokens a budget counts: this run's and its children's."""
        return self.total_tokens + self.delegated_tokens

    @property
    def budget_cost_usd(self) -> float:
        return self.cost_usd + self.delegated_cost_usd

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in Usage.model_fields})

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in Usage.model_fields)


# --- synchronous invoke ----------------------------------------------------------------------------------

Payload = str | dict[str, Any] | list[Any] | int | float | bool | None


class InvokeRequest(WireModel):
    SCHEMA = "lattice.invoke.request"

    request_id: str = Field(min_length=1, max_length=128)
    agent: AgentName | None = None
    capability: Capability | None = None
    input: Payload = ""
    context: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    #: Delegated by another run (lattice_invoke): what it has left to spend, and how deep the chain is.
    budget: Budget | None = None
    depth: int = Field(default=0, ge=0, le=64)


class InvokeResult(WireModel):
    SCHEMA = "lattice.invoke.result"

    request_id: str
    station_id: StationId
    agent: AgentName
    output: Payload
    started_at: datetime
    finished_at: datetime
    usage: Usage = Field(default_factory=Usage)

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


class ErrorCode(enum.StrEnum):
    #: The request itself is malformed; retrying it unchanged will fail again.
    BAD_REQUEST = "bad_request"
    #: The station does not host the agent (or none with the capability).
    NOT_FOUND = "not_found"
    #: At its concurrency cap with a full queue; retry elsewhere or later.
    BUSY = "busy"
    #: The station is draining and takes no new work.
    DRAINING = "draining"
    TIMEOUT = "timeout"
    #: The agent (its model, its function) failed.
    AGENT_ERROR = "agent_error"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    #: The run reached its token or cost budget (agent's or work item's); retrying would spend it again.
    BUDGET_EXCEEDED = "budget_exceeded"
    #: The run reached maxTurns or maxToolCalls without a final answer.
    LIMIT_EXCEEDED = "limit_exceeded"
    #: A tool call started on a station that died before it recorded the result, and the tool's policy says a
    #: person must decide (it may have had its side effect): the work is escalated, never run twice silently.
    UNKNOWN_OUTCOME = "unknown_outcome"
    #: The model API stayed rate-limited, overloaded or unreachable through every retry: later may work.
    MODEL_UNAVAILABLE = "model_unavailable"

    @property
    def retryable(self) -> bool:
        return self in (ErrorCode.BUSY, ErrorCode.DRAINING, ErrorCode.TIMEOUT, ErrorCode.INTERNAL,
                        ErrorCode.MODEL_UNAVAILABLE)


class InvokeError(WireModel):
    SCHEMA = "lattice.invoke.error"

    request_id: str = ""
    station_id: StationId | None = None
    code: ErrorCode
    message: str
    #: What the run spent before it failed (a budget stop says how much).
    usage: Usage | None = None

    @property
    def retryable(self) -> bool:
        return self.code.retryable


# --- async work, progress and the auction (used by the work store, auctioneer and witness) ---------------


class WorkPhase(enum.StrEnum):
    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    UNSCHEDULABLE = "Unschedulable"
    ASSIGNED = "Assigned"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    ESCALATED = "Escalated"
    #: Suspended before a tool call that needs a person's approval: no station holds it, nothing runs.
    AWAITING_APPROVAL = "AwaitingApproval"
    #: Suspended on a question the agent asked (``ask_user``): waits for a reply, holding no station.
    AWAITING_INPUT = "AwaitingInput"

    @property
    def terminal(self) -> bool:
        return self in (WorkPhase.SUCCEEDED, WorkPhase.FAILED, WorkPhase.CANCELLED, WorkPhase.ESCALATED)

    @property
    def awaiting(self) -> bool:
        """Waiting for a person (an approval, a reply)."""
        return self in (WorkPhase.AWAITING_APPROVAL, WorkPhase.AWAITING_INPUT)


class WorkError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str


#: What a waiting record shows of the call's arguments (the journal has them whole).
MAX_WAITING_ARGUMENTS = 4096
#: Decisions a record keeps (one per call that waited for a person); more are refused.
MAX_DECISIONS = 1000


class Waiting(BaseModel):
    """What a suspended run waits for: the approval of one tool call, or the answer to a question."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: str = Field(pattern="^(approval|input)$")
    #: The call's idempotency key (``{work id}/{n}``): the decision is recorded under it.
    key: str = Field(max_length=512)
    tool: str = Field(default="", max_length=256)
    #: The call's arguments as JSON, cut at MAX_WAITING_ARGUMENTS characters.
    arguments: str = Field(default="", max_length=MAX_WAITING_ARGUMENTS + 64)
    question: str = Field(default="", max_length=MAX_WAITING_ARGUMENTS + 64)
    requested_at: datetime = Field(default_factory=utcnow)
    #: No decision by then: the call is rejected (an approval) or answered "no answer" (a question).
    deadline_at: datetime | None = None

    def summary(self) -> str:
        if self.kind == "approval":
            return f"approval of {self.tool}({self.arguments[:200]})"
        return f"an answer to: {self.question[:200]}"


class HumanDecision(BaseModel):
    """A person's answer to a waiting run: approved or not (an approval), the reply (a question)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    approved: bool
    reply: str | None = Field(default=None, max_length=100_000)
    reason: str = Field(default="", max_length=4096)
    by: str = Field(default="", max_length=256)
    at: datetime = Field(default_factory=utcnow)


class WorkRecord(WireModel):
    """A piece of async work in the org's ``work`` KV bucket (key: work id). Every change is a CAS on the
    KV revision; ``attempt_id`` fences late reports from superseded attempts."""

    SCHEMA = "lattice.work.record"

    org: OrgId
    work_id: WorkId
    spec: WorkItemSpec
    phase: WorkPhase = WorkPhase.PENDING
    #: Number of the current (or last) attempt; 0 until first assigned. Retries are attempts beyond the first.
    attempt: int = Field(default=0, ge=0)
    attempt_id: str | None = None
    station_id: StationId | None = None
    reason: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    scheduled_at: datetime | None = None
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Unschedulable or requeued work is not auctioned again before this time.
    retry_at: datetime | None = None
    #: Auctions that found no bidder, in a row (drives the Unschedulable backoff).
    schedule_attempts: int = Field(default=0, ge=0)
    progress_percent: float | None = Field(default=None, ge=0, le=100)
    progress_message: str = ""
    last_progress_at: datetime | None = None
    result: Payload = None
    #: Where a result too large for the record lives (``obj://bucket/name``).
    result_ref: str | None = None
    error: WorkError | None = None
    cancel_requested: bool = False
    #: Late reports from superseded attempts that were refused.
    rejected_reports: int = Field(default=0, ge=0)
    parent_id: WorkId | None = None
    #: How deep this work is in a chain of delegations (0: submitted by a user); bounded by the agents' limit.
    depth: int = Field(default=0, ge=0, le=64)
    #: Work this run delegated through lattice tools (bounded by its maxToolCalls).
    children: list[WorkId] = Field(default_factory=list, max_length=100_000)
    #: Tokens, cost, model and tool calls of the run (the last attempt's, with what earlier attempts spent).
    usage: Usage | None = None
    #: Workflows: how many steps have succeeded, and their outputs by step name.
    step_index: int = Field(default=0, ge=0)
    step_outputs: dict[str, Payload] = Field(default_factory=dict)
    #: Outputs of finished steps too large to keep inline: their results-store references, by step name (a step
    #: whose input names one is given the output itself, read from the store).
    step_output_refs: dict[str, str] = Field(default_factory=dict)
    traceparent: str | None = None
    #: AwaitingApproval / AwaitingInput: what the run waits for.
    waiting: Waiting | None = None
    #: What people decided for the calls that waited, by the call's idempotency key (a resumed run reads them).
    decisions: dict[str, HumanDecision] = Field(default_factory=dict, max_length=MAX_DECISIONS)
    #: Attempts that ended by suspending (waiting for a person): they spend no retry.
    suspensions: int = Field(default=0, ge=0)

    @property
    def is_workflow(self) -> bool:
        return bool(self.spec.steps)

    @property
    def retries(self) -> int:
        return max(self.attempt - 1 - self.suspensions, 0)


class WorkAssign(WireModel):
    """Sent (request/reply) to the auction's winner. Carries the record as the auctioneer wrote it and its KV
    revision, so that the station's first compare-and-set needs no read."""

    SCHEMA = "lattice.work.assign"

    record: WorkRecord
    revision: int = Field(ge=0)
    #: Set for an offer (to the auctioneer's expected winner, before any auction): take it if a run slot is free
    #: or the load is at most this, else decline and the auction goes on. Unset: take it if the queue has room.
    offer_max_load: int | None = Field(default=None, ge=0)


class WorkAccept(WireModel):
    SCHEMA = "lattice.work.accept"

    work_id: WorkId
    attempt_id: str
    station_id: StationId
    accepted: bool
    reason: str = ""


class WorkCancel(WireModel):
    SCHEMA = "lattice.work.cancel"

    work_id: WorkId
    attempt_id: str | None = None
    reason: str = ""


class WorkProgress(WireModel):
    SCHEMA = "lattice.work.progress"

    work_id: WorkId
    attempt_id: str
    station_id: StationId
    percent: float | None = Field(default=None, ge=0, le=100)
    message: str = ""
    tokens: str = ""
    #: Agent runs: the turn (model call) under way, and the tool being called or answered.
    turn: int | None = Field(default=None, ge=0)
    tool: str = ""
    usage: Usage | None = None
    sent_at: datetime = Field(default_factory=utcnow)


class AuctionRequest(WireModel):
    SCHEMA = "lattice.auction.request"

    auction_id: str
    work_id: WorkId
    agent: AgentName | None = None
    capabilities: list[Capability] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    prefer_labels: dict[str, str] = Field(default_factory=dict)
    deadline_ms: int = Field(default=200, gt=0, le=60_000)


class AuctionBid(WireModel):
    """A station's answer to an auction. A station that cannot take the work answers ``declined`` rather than
    staying silent, so that the auction can close as soon as every eligible station has spoken."""

    SCHEMA = "lattice.auction.bid"

    auction_id: str
    station_id: StationId
    score: float = 0.0
    load: int = Field(default=0, ge=0)
    capacity: int = Field(default=0, ge=0)
    declined: bool = False
    reason: str = ""


# --- the journal of an agent run ---------------------------------------------------------------------------

#: What a journal entry may hold inline; a larger one is kept in the results object store, the stream holds a
#: stub naming it (``ref``).
JOURNAL_INLINE_BYTES = 64 * 1024


class JournalKind(enum.StrEnum):
    #: An attempt took the run over from an earlier one (after a crash, a requeue, a hand-back): fences it off.
    ATTEMPT = "attempt"
    #: A model call and its answer.
    TURN = "turn"
    #: A tool call about to start (written before it runs: a call with no result after it may have happened).
    CALL = "call"
    #: A tool call's result.
    RESULT = "result"


class JournalToolCall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(max_length=256)
    name: str = Field(max_length=256)
    arguments: dict[str, Any] | str


class JournalEntry(WireModel):
    """One entry of a run's journal (stream ``lattice-{org}-journal``, subject per work id), appended by the
    station before the loop acts on what it records. Entries are numbered from 1 without gaps; the run is
    rebuilt from them by :func:`station_runtime.executors.journal.replay`."""

    SCHEMA = "lattice.journal.entry"

    work_id: WorkId
    n: int = Field(ge=1)
    kind: JournalKind
    attempt: int = Field(default=0, ge=0)
    attempt_id: str = Field(default="", max_length=64)
    station_id: str = Field(default="", max_length=128)
    at: datetime = Field(default_factory=utcnow)
    #: The turn this entry belongs to (1-based).
    turn: int = Field(default=0, ge=0)
    #: ``turn``: the request, by reference: the first ``messages`` messages of the conversation as the journal
    #: rebuilds it (the input, then every answer and result before this turn), never a copy.
    messages: int = Field(default=0, ge=0)
    text: str = ""
    tool_calls: list[JournalToolCall] = Field(default_factory=list, max_length=1024)
    #: The calls of this answer that start right after the entry is stored (by id): each needs no ``call``
    #: entry of its own, and one with no result in the journal may have had its effect.
    started: list[str] = Field(default_factory=list, max_length=1024)
    finish_reason: str = Field(default="", max_length=32)
    usage: Usage | None = None
    model: str = Field(default="", max_length=256)
    #: ``call`` / ``result``: the model's id for the call, its position among the run's calls (1-based), the
    #: tool and its arguments, and the idempotency key the tool was given (stable across attempts).
    call_id: str = Field(default="", max_length=256)
    call_index: int = Field(default=0, ge=0)
    name: str = Field(default="", max_length=256)
    arguments: dict[str, Any] | str | None = None
    key: str = Field(default="", max_length=512)
    is_error: bool = False
    duration_ms: float | None = Field(default=None, ge=0)
    #: A lattice tool's child work and what it spent.
    child: str | None = Field(default=None, max_length=256)
    delegated: Usage | None = None
    #: ``attempt``: how many entries the attempt found and continued from.
    resumed_at: int = Field(default=0, ge=0)
    #: A stub: the whole entry is in the results object store under this reference.
    ref: str | None = Field(default=None, max_length=512)

"""Status of the resources, as the operator writes it and `kubectl get` shows it.

Status carries the coarse state only (phase, conditions, counts, observedGeneration), updated at a bounded rate:
high-churn state (heartbeats, bids, progress ticks) stays in NATS. Every field is declared here so the CRD
schema declares it too (the API server prunes undeclared status fields).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: A WorkItem's result is mirrored into its status up to this many characters (the full result stays in NATS).
MAX_STATUS_RESULT_CHARS = 4096


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(StatusModel):
    """The shape of metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class StationStatus(StatusModel):
    org: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    #: Ids of the live stations of this resource (from lattice presence).
    stations: list[str] = Field(default_factory=list)
    load: int = 0
    capacity: int = 0
    #: "load/capacity", for the printer column.
    load_summary: str = ""
    last_heartbeat: datetime | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class DiscoveredTool(StatusModel):
    """A tool an agent has, as its stations found it when they loaded the agent."""

    name: str
    #: Where it comes from: a ToolServer's name, ``mcp`` (declared on the agent), ``function`` or ``lattice``.
    source: str = ""


class AgentStatus(StatusModel):
    org: str | None = None
    model: str = ""
    #: The tools the agent's stations discovered (MCP servers' tools, function and lattice tools).
    tools: list[DiscoveredTool] = Field(default_factory=list)
    #: "N tools", for the printer column.
    tools_summary: str = ""
    #: Number of live stations hosting the agent, and their ids.
    stations: int = 0
    station_ids: list[str] = Field(default_factory=list)
    ready: bool = False
    revision: int | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class ToolServerStatus(StatusModel):
    org: str | None = None
    transport: str = ""
    #: Agents of the org that use this server, and the tools their stations discovered on it.
    agents: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class WorkItemStatus(StatusModel):
    org: str | None = None
    work_id: str | None = None
    phase: str | None = None
    station: str | None = None
    attempts: int = 0
    progress: float | None = None
    progress_message: str = ""
    #: The result as JSON text, cut at MAX_STATUS_RESULT_CHARS (``result_truncated`` says so).
    result: str | None = Field(default=None, max_length=MAX_STATUS_RESULT_CHARS)
    result_truncated: bool = False
    error: str | None = None
    error_code: str | None = None
    reason: str = ""
    #: AwaitingApproval / AwaitingInput: what the run waits for, and how to decide (an annotation).
    waiting_for: str | None = None
    #: Agent runs: tokens, cost, model and tool calls; work it delegated; the work that delegated it.
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    tool_calls: int | None = None
    children: list[str] = Field(default_factory=list)
    parent: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)

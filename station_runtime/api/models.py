"""Station, Agent, ToolServer and WorkItem as pydantic models, in Kubernetes shape (apiVersion/kind/metadata/spec).

The same classes validate YAML for ``lattice up``, are what the operator reads from the API server, and are the
source of the CRD schemas in ``crds/``. The specs themselves are part of the wire contract
(:mod:`station_runtime.contract.specs`) and re-exported here; unknown metadata fields are ignored because the API
server adds many.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..contract.specs import (
    AgentSpec,
    ApiModel,
    McpServerSpec,
    ModelSpec,
    SecretKeyRef,
    StationSpec,
    ToolRef,
    ToolServerSpec,
    WorkConstraints,
    WorkflowStep,
    WorkItemSpec,
    WorkTimeouts,
)
from .status import AgentStatus, StationStatus, ToolServerStatus, WorkItemStatus

__all__ = [
    "API_VERSION", "GROUP", "KINDS", "NAME_PATTERN", "VERSION", "Agent", "AgentSpec", "ApiModel", "Manifest",
    "ModelSpec", "ObjectMeta", "SecretKeyRef", "Station", "StationSpec", "ToolRef", "ToolServer", "ToolServerSpec",
    "WorkConstraints", "WorkItem", "WorkItemSpec", "WorkTimeouts", "WorkflowStep",
]

GROUP = "lattice.station.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes object names: DNS-1123 labels without dots, so a name is also a valid lattice id.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None


class _Resource(ApiModel):
    api_version: Literal["lattice.station.dev/v1alpha1"] = "lattice.station.dev/v1alpha1"
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name


class Station(_Resource):
    kind: Literal["Station"] = "Station"
    spec: StationSpec = Field(default_factory=StationSpec)
    status: StationStatus | None = None


class Agent(_Resource):
    kind: Literal["Agent"] = "Agent"
    spec: AgentSpec
    status: AgentStatus | None = None


class ToolServer(_Resource):
    """An MCP tool server, declared once per org and referenced by agents (``tools: [{server: NAME}]``)."""

    kind: Literal["ToolServer"] = "ToolServer"
    spec: ToolServerSpec
    status: ToolServerStatus | None = None


class WorkItem(_Resource):
    kind: Literal["WorkItem"] = "WorkItem"
    spec: WorkItemSpec
    status: WorkItemStatus | None = None


Manifest = Station | Agent | ToolServer | WorkItem
KINDS: dict[str, type[Station] | type[Agent] | type[ToolServer] | type[WorkItem]] = {
    "Station": Station,
    "Agent": Agent,
    "ToolServer": ToolServer,
    "WorkItem": WorkItem,
}


def referenced_servers(agent: Agent) -> list[str]:
    """The ToolServers an agent's tools name."""
    return [ref.server for ref in agent.spec.tools if ref.server is not None]


def resolve_tool_servers(agent: Agent, servers: Iterable[ToolServer]) -> dict[str, McpServerSpec]:
    """Pure: the specs of the ToolServers the agent names, as its definition carries them (without the org: the
    agent's own). A name with no ToolServer is left out; the station then says which is missing."""
    by_name = {s.name: s.spec for s in servers}
    return {name: McpServerSpec.model_validate(by_name[name].model_dump(exclude={"org"}))
            for name in referenced_servers(agent) if name in by_name}

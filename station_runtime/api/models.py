"""Station, Agent and WorkItem as pydantic models, in Kubernetes shape (apiVersion/kind/metadata/spec).

The same classes validate YAML for ``lattice up``, are what the operator reads from the API server, and are the
source of the CRD schemas in ``crds/``. The specs themselves are part of the wire contract
(:mod:`station_runtime.contract.specs`) and re-exported here; unknown metadata fields are ignored because the API
server adds many.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..contract.specs import (
    AgentSpec,
    ApiModel,
    ModelSpec,
    SecretKeyRef,
    StationSpec,
    WorkConstraints,
    WorkflowStep,
    WorkItemSpec,
    WorkTimeouts,
)
from .status import AgentStatus, StationStatus, WorkItemStatus

__all__ = [
    "API_VERSION", "GROUP", "KINDS", "NAME_PATTERN", "VERSION", "Agent", "AgentSpec", "ApiModel", "Manifest",
    "ModelSpec", "ObjectMeta", "SecretKeyRef", "Station", "StationSpec", "WorkConstraints", "WorkItem",
    "WorkItemSpec", "WorkTimeouts", "WorkflowStep",
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


class WorkItem(_Resource):
    kind: Literal["WorkItem"] = "WorkItem"
    spec: WorkItemSpec
    status: WorkItemStatus | None = None


Manifest = Station | Agent | WorkItem
KINDS: dict[str, type[Station] | type[Agent] | type[WorkItem]] = {
    "Station": Station,
    "Agent": Agent,
    "WorkItem": WorkItem,
}

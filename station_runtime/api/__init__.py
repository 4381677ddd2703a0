"""The user-facing resources (Station, Agent, WorkItem): one set of pydantic models for YAML manifests,
``lattice up`` and the Kubernetes CRDs generated from them."""

from ..contract.selectors import LabelSelector, selector_matches
from .models import (
    API_VERSION,
    GROUP,
    VERSION,
    Agent,
    AgentSpec,
    Manifest,
    ModelSpec,
    ObjectMeta,
    SecretKeyRef,
    Station,
    StationSpec,
    WorkConstraints,
    WorkItem,
    WorkItemSpec,
    WorkTimeouts,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Agent",
    "AgentSpec",
    "LabelSelector",
    "Manifest",
    "ModelSpec",
    "ObjectMeta",
    "SecretKeyRef",
    "Station",
    "StationSpec",
    "WorkConstraints",
    "WorkItem",
    "WorkItemSpec",
    "WorkTimeouts",
    "selector_matches",
]

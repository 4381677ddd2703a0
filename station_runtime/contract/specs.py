"""The desired state of each resource (Station, Agent, WorkItem specs), as users write it and as it travels.

A spec is part of the wire contract: an ``AgentDefinition`` in the agents bucket carries an ``AgentSpec`` and every
``WorkRecord`` carries its ``WorkItemSpec``, so these models live here, below the user-facing resources of
:mod:`station_runtime.api`, which wrap them in Kubernetes shape (apiVersion/kind/metadata/spec) and generate the
CRDs from them. Field names are snake_case in Python and camelCase on the wire. Unknown spec fields are rejected
(a typo in a manifest should fail loudly, as ``kubectl --validate=strict`` does).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .ids import AgentName, Capability, OrgId
from .selectors import LabelSelector


class ApiModel(BaseModel):
    # No inf or NaN anywhere: `.inf` in a manifest (or `--timeout inf`) used to be accepted, stored as JSON null,
    # and then no process could read the record back.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False)


class SecretKeyRef(ApiModel):
    """A key of a Kubernetes Secret. The operator injects it into the station's environment; its value never
    leaves the station pod (not in KV, status, events or logs)."""

    name: str
    key: str


class ModelSpec(ApiModel):
    """Which executor runs the agent and how it reaches its model."""

    provider: Literal["echo", "python", "openai"] = Field(
        description="echo: returns its input (tests, demos); python: calls module:function; "
        "openai: an OpenAI-compatible chat completions API."
    )
    name: str | None = Field(default=None, max_length=256, description="Model name for the openai provider.")
    base_url: str | None = Field(default=None, description="Base URL of the OpenAI-compatible API.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    api_key_file: str | None = Field(default=None, description="File holding the API key.")
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="Kubernetes only.")
    function: str | None = Field(default=None, max_length=512, description="module:function for the python provider.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    max_retries: int = Field(default=3, ge=0, le=20)
    stream: bool = True
    params: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Executor parameters, e.g. echo's delaySeconds."
    )

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelSpec:
        if self.provider == "python" and not (self.function and ":" in self.function):
            raise ValueError("provider 'python' needs function: 'module:function'")
        if self.provider == "openai" and not self.name:
            raise ValueError("provider 'openai' needs name: the model to call, e.g. 'gpt-4o-mini'")
        return self


class StationSpec(ApiModel):
    org: OrgId | None = Field(default=None, description="Org (tenant); defaults to the lattice's org.")
    replicas: int = Field(default=1, ge=0, le=1000)
    capabilities: list[Capability] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict, description="Labels used by selectors and constraints.")
    max_concurrency: int = Field(default=4, ge=1, le=10_000)
    agent_selector: LabelSelector | None = Field(
        default=None, description="Which agents of the org this station hosts; all when unset."
    )
    image: str | None = Field(default=None, description="Kubernetes only: the runtime image.")


class AgentSpec(ApiModel):
    org: OrgId | None = None
    description: str = ""
    capabilities: list[Capability] = Field(default_factory=list)
    system_prompt: str = ""
    model: ModelSpec
    tools: list[str] = Field(default_factory=list)
    station_selector: LabelSelector | None = Field(
        default=None, description="Which stations may host this agent; all when unset."
    )


class WorkConstraints(ApiModel):
    labels: dict[str, str] = Field(default_factory=dict, description="Stations must carry all these labels.")
    prefer_labels: dict[str, str] = Field(default_factory=dict, description="Soft preference, raises the bid.")


class WorkTimeouts(ApiModel):
    schedule_to_start_seconds: float | None = Field(default=None, gt=0)
    start_to_close_seconds: float = Field(default=600.0, gt=0)


class WorkflowStep(ApiModel):
    """One step of a workflow: auctioned like any work. ``input`` is a template: ``{{input}}`` is the workflow's
    input, ``{{steps.NAME.output}}`` the output of an earlier step (JSON-encoded unless it is a string)."""

    name: AgentName
    agent: AgentName | None = None
    required_capabilities: list[Capability] = Field(default_factory=list)
    input: str = "{{input}}"

    @model_validator(mode="after")
    def _target(self) -> WorkflowStep:
        if not self.agent and not self.required_capabilities:
            raise ValueError(f"step {self.name!r}: set agent or requiredCapabilities")
        return self


class WorkItemSpec(ApiModel):
    org: OrgId | None = None
    agent: AgentName | None = None
    required_capabilities: list[Capability] = Field(default_factory=list)
    input: str | dict[str, Any] = ""
    constraints: WorkConstraints = Field(default_factory=WorkConstraints)
    timeouts: WorkTimeouts = Field(default_factory=WorkTimeouts)
    max_retries: int = Field(default=2, ge=0, le=50)
    priority: int = Field(default=0, ge=-100, le=100)
    steps: list[WorkflowStep] = Field(default_factory=list, description="A workflow: steps run in order.")

    @model_validator(mode="after")
    def _target(self) -> WorkItemSpec:
        if not self.agent and not self.required_capabilities and not self.steps:
            raise ValueError("set agent, requiredCapabilities or steps: work must say what may run it")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("workflow step names must be unique")
        return self

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


class Price(ApiModel):
    """What a model costs, in US dollars per million tokens: with it, every run's usage gets a cost, and a
    ``maxCostUsd`` budget can be enforced."""

    input_per_million_usd: float = Field(ge=0, le=100_000)
    output_per_million_usd: float = Field(ge=0, le=100_000)
    cached_input_per_million_usd: float | None = Field(default=None, ge=0, le=100_000,
                                                       description="Input read from the prompt cache; default: "
                                                       "the input price.")
    cache_write_per_million_usd: float | None = Field(default=None, ge=0, le=100_000,
                                                      description="Input written to the prompt cache (Anthropic); "
                                                      "default: the input price.")


#: The model providers a station can run, and which need a model name.
MODEL_PROVIDERS = ("echo", "python", "openai", "anthropic")
LLM_PROVIDERS = ("openai", "anthropic")
Scalar = str | int | float | bool
#: A model parameter: a scalar, or a list of them (stop sequences).
ParamValue = Scalar | list[Scalar]


class ModelSpec(ApiModel):
    """Which executor runs the agent and how it reaches its model."""

    provider: Literal["echo", "python", "openai", "anthropic"] = Field(
        description="echo: returns its input (tests, demos); python: calls module:function; "
        "openai: an OpenAI-compatible chat completions API (OpenAI, vLLM, Ollama, LM Studio, OpenRouter, Azure); "
        "anthropic: the Anthropic Messages API."
    )
    name: str | None = Field(default=None, max_length=256, description="The model to call (openai, anthropic).")
    base_url: str | None = Field(default=None, max_length=2048, description="Base URL of the model API.")
    api_key_env: str | None = Field(default=None, max_length=256,
                                    description="Environment variable holding the API key (default OPENAI_API_KEY "
                                    "or ANTHROPIC_API_KEY).")
    api_key_file: str | None = Field(default=None, max_length=4096, description="File holding the API key.")
    api_version: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9.\-]+$",
        description="openai on Azure OpenAI: the api-version to call (e.g. 2024-10-21). With it, baseUrl is the "
        "resource endpoint (https://NAME.openai.azure.com), name is the deployment, and the key goes in the "
        "api-key header (default variable AZURE_OPENAI_API_KEY).")
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="Kubernetes only.")
    function: str | None = Field(default=None, max_length=512, description="module:function for the python provider.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000,
                                   description="Output tokens per model call (anthropic: default 4096).")
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600, description="One model call, streamed or not.")
    max_retries: int = Field(default=3, ge=0, le=20,
                             description="Retries of a model call on 429, 5xx, overloaded and connection errors.")
    stream: bool = True
    price: Price | None = Field(default=None, description="Price per million tokens: gives usage a cost.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict, max_length=64,
        description="echo/python: executor parameters (e.g. delaySeconds); openai/anthropic: extra request "
        "parameters sent to the API as they are (e.g. top_p, seed, reasoning_effort).",
    )

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelSpec:
        if self.provider == "python" and not (self.function and ":" in self.function):
            raise ValueError("provider 'python' needs function: 'module:function'")
        if self.api_version is not None and not (self.provider == "openai" and self.base_url):
            raise ValueError("apiVersion is for provider 'openai' on Azure OpenAI, and needs baseUrl: the resource "
                             "endpoint, e.g. https://NAME.openai.azure.com")
        if self.provider in LLM_PROVIDERS and not self.name:
            example = "gpt-4o-mini" if self.provider == "openai" else "claude-sonnet-4-5"
            raise ValueError(f"provider {self.provider!r} needs name: the model to call, e.g. {example!r}")
        return self


class ValueSource(ApiModel):
    """A value given inline or read where it lives: an environment variable, a file, or (Kubernetes) a Secret's
    key, which the operator injects into the station's environment. Secrets stay on the station: only the
    reference travels."""

    value: str | None = Field(default=None, max_length=8192)
    from_env: str | None = Field(default=None, max_length=256)
    from_file: str | None = Field(default=None, max_length=4096)
    secret_ref: SecretKeyRef | None = None

    @model_validator(mode="after")
    def _one(self) -> ValueSource:
        given = [n for n in ("value", "from_env", "from_file", "secret_ref") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of value, fromEnv, fromFile, secretRef")
        return self


class McpServerSpec(ApiModel):
    """An MCP tool server: a command the station starts and talks to over stdio, or a URL it reaches over
    streamable HTTP. Declared once per org as a ``ToolServer`` and referenced by agents, or inline on an agent."""

    description: str = Field(default="", max_length=2048)
    transport: Literal["stdio", "http"] | None = Field(default=None,
                                                       description="Default: stdio with command, http with url.")
    command: str | None = Field(default=None, max_length=4096)
    args: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str | ValueSource] = Field(default_factory=dict, max_length=256)
    cwd: str | None = Field(default=None, max_length=4096)
    url: str | None = Field(default=None, max_length=2048)
    headers: dict[str, str | ValueSource] = Field(default_factory=dict, max_length=64)
    connect_timeout_seconds: float = Field(default=30.0, gt=0, le=600,
                                           description="Starting or reaching the server and listing its tools.")
    tool_timeout_seconds: float | None = Field(default=None, gt=0, le=3600,
                                               description="One tool call; default: the agent's toolTimeoutSeconds.")

    @model_validator(mode="after")
    def _transport(self) -> McpServerSpec:
        transport = self.transport or ("http" if self.url and not self.command else "stdio")
        if transport == "stdio" and not self.command:
            raise ValueError("an MCP server over stdio needs command (and args)")
        if transport == "http":
            if not self.url:
                raise ValueError("an MCP server over http needs url")
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url {self.url!r} must start with http:// or https://")
        self.transport = transport
        return self


class ToolServerSpec(McpServerSpec):
    """The spec of a ``ToolServer`` resource: an MCP server of an org."""

    org: OrgId | None = Field(default=None, description="Org (tenant); defaults to the lattice's org.")


LatticeToolName = Literal["submit", "await", "invoke"]


class ToolRef(ApiModel):
    """One entry of an agent's ``tools``: exactly one of ``server`` (a ToolServer of the org), ``mcp`` (an MCP
    server declared inline), ``function`` (a Python function tool), ``lattice`` (delegation through the lattice)
    or ``askUser`` (a question to a person).
    """

    server: AgentName | None = Field(default=None, description="A ToolServer of the org, by name.")
    mcp: McpServerSpec | None = Field(default=None, description="An MCP server declared here.")
    function: str | None = Field(default=None, max_length=512, description="module:function, a Python function.")
    lattice: list[LatticeToolName] | None = Field(default=None,
                                                  description="Delegation tools: submit, await, invoke.")
    allow: list[str] = Field(default_factory=list, max_length=512,
                             description="MCP servers: only these tools (default: all the server has).")
    delegate_to: list[AgentName] = Field(default_factory=list, max_length=256,
                                         description="lattice: only these agents (default: any agent of the org).")
    name: str | None = Field(default=None, max_length=64, pattern=r"^[a-zA-Z0-9_-]{1,64}$",
                             description="function: the tool's name (default: the function's).")
    ask_user: bool | None = Field(default=None, description="The ask_user tool: the agent asks a person a "
                                  "question and the run waits (AwaitingInput) for `lattice work reply`.")
    require_approval: bool = Field(default=False, description="Every call of these tools waits (AwaitingApproval) "
                                   "for a person's `lattice work approve` or `reject` before it runs.")
    unknown_outcome: Literal["retry", "escalate"] | None = Field(
        default=None, description="A call that started on a station that died before it recorded the result: "
        "retry (run it again with the same idempotency key: the tool honours the key) or escalate (a person "
        "decides; the run stops, nothing runs twice). Default: escalate; lattice tools always retry (the child's "
        "id is the key).")

    @model_validator(mode="after")
    def _one(self) -> ToolRef:
        given = [n for n in ("server", "mcp", "function", "lattice", "ask_user") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("a tool entry sets exactly one of server, mcp, function, lattice, askUser")
        if self.function is not None and ":" not in self.function:
            raise ValueError(f"function {self.function!r} must be 'module:function'")
        if self.allow and not (self.server or self.mcp):
            raise ValueError("allow applies to MCP servers (server or mcp)")
        if self.delegate_to and self.lattice is None:
            raise ValueError("delegateTo applies to lattice tools")
        return self


class Budget(ApiModel):
    """Hard limits on what a run may spend, enforced by the station outside the model: a run that would exceed
    one stops with ``budget_exceeded`` (not retried) and records its usage so far."""

    max_tokens: int | None = Field(default=None, ge=1, le=10_000_000_000,
                                   description="Input plus output tokens over every model call of the run.")
    max_cost_usd: float | None = Field(default=None, gt=0, le=1_000_000,
                                       description="Needs the model's price.")


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
    description: str = Field(default="", max_length=4096)
    capabilities: list[Capability] = Field(default_factory=list)
    system_prompt: str = Field(default="", max_length=1_000_000)
    prompt_template: str | None = Field(
        default=None, max_length=1_000_000,
        description="Handlebars template of the first user message (a .prompt file's body); with it, systemPrompt "
        "is a template too. Both are rendered with the work's input: a JSON object's fields, and input.")
    input_schema: dict[str, Any] | None = Field(
        default=None, description="JSON schema a JSON object input must match (checked when a run starts).")
    model: ModelSpec
    tools: list[ToolRef] = Field(default_factory=list, max_length=64)
    max_turns: int = Field(default=10, ge=1, le=1000, description="Model calls per run.")
    max_tool_calls: int = Field(default=32, ge=0, le=100_000, description="Tool calls per run.")
    tool_timeout_seconds: float = Field(default=60.0, gt=0, le=3600, description="One tool call.")
    budget: Budget = Field(default_factory=Budget)
    output_schema: dict[str, Any] | None = Field(
        default=None, description="JSON schema of the final answer: sent as the structured-output format "
        "(openai) and checked on the answer (both).")
    max_delegation_depth: int = Field(default=4, ge=0, le=32,
                                      description="How deep work delegated through lattice tools may nest.")
    require_approval: bool = Field(default=False, description="Every tool call of this agent waits for a person's "
                                   "approval (as requireApproval on each of its tools).")
    approval_timeout_seconds: float | None = Field(
        default=None, gt=0, le=365 * 24 * 3600, description="A run waiting for a person longer than this goes on "
        "without: the call is rejected (an approval) or answered 'no answer' (a question). Default: no deadline.")
    journal: bool = Field(default=True, description="Journal every model turn and tool call of async work, so "
                          "that a new attempt resumes the run where it stopped instead of starting again.")
    station_selector: LabelSelector | None = Field(
        default=None, description="Which stations may host this agent; all when unset."
    )

    @model_validator(mode="after")
    def _tools(self) -> AgentSpec:
        if self.tools and self.model.provider not in LLM_PROVIDERS:
            raise ValueError(f"tools need a model that calls them (provider openai or anthropic), "
                             f"not {self.model.provider!r}")
        return self


class WorkConstraints(ApiModel):
    labels: dict[str, str] = Field(default_factory=dict, description="Stations must carry all these labels.")
    prefer_labels: dict[str, str] = Field(default_factory=dict, description="Soft preference, raises the bid.")


#: A running attempt's progress reaches its record at most once a second: a heartbeat timeout shorter than twice
#: that could not tell a live run from a stuck one.
MIN_HEARTBEAT_S = 2.0


class WorkTimeouts(ApiModel):
    """Temporal's four timeouts. ``scheduleToStart``: from creation to the start of an attempt (waiting for a
    station); ``startToClose``: one attempt; ``scheduleToClose``: from creation to the final outcome, across every
    attempt and retry; ``heartbeat``: how long a running attempt may go without reporting progress."""

    schedule_to_start_seconds: float | None = Field(default=None, gt=0)
    start_to_close_seconds: float = Field(default=600.0, gt=0)
    schedule_to_close_seconds: float | None = Field(
        default=None, gt=0, description="From creation to the final outcome, across all attempts: past it the work "
        "fails with a timeout, wherever it is (waiting, or running: the station stops the run).")
    heartbeat_seconds: float | None = Field(
        default=None, ge=MIN_HEARTBEAT_S, le=86_400,
        description="A running attempt that reports no progress (an agent's turn or tool call, streamed tokens, a "
        "percentage) for this long is requeued as stuck, even though its station is alive. Default: the "
        "controller's stuck threshold (10 minutes).")


#: Steps a workflow may have.
MAX_STEPS = 256


class WorkflowStep(ApiModel):
    """One step of a workflow: auctioned like any work. ``input`` is a template: ``{{input}}`` is the workflow's
    input, ``{{steps.NAME.output}}`` the output of a step it depends on (JSON-encoded unless it is a string)."""

    name: AgentName
    agent: AgentName | None = None
    required_capabilities: list[Capability] = Field(default_factory=list)
    input: str = "{{input}}"
    depends_on: list[AgentName] | None = Field(
        default=None, max_length=MAX_STEPS, description="Steps that must succeed before this one starts (a graph: "
        "steps whose dependencies are met run in parallel, a step with several waits for all). Default: the step "
        "listed before it (none for the first); [] starts it at once.")
    max_retries: int | None = Field(default=None, ge=0, le=50, description="This step's retries (default: the "
                                    "workflow's maxRetries).")
    timeouts: WorkTimeouts | None = Field(default=None, description="This step's timeouts (default: the "
                                          "workflow's; its scheduleToClose still bounds every step).")
    constraints: WorkConstraints | None = Field(default=None, description="Where this step may run (default: the "
                                                "workflow's constraints).")

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
    steps: list[WorkflowStep] = Field(default_factory=list, description="A workflow: steps run in order, or as "
                                      "a graph by their dependsOn.")
    max_turns: int | None = Field(default=None, ge=1, le=1000, description="Overrides the agent's maxTurns.")
    max_tool_calls: int | None = Field(default=None, ge=0, le=100_000,
                                       description="Overrides the agent's maxToolCalls.")
    budget: Budget | None = Field(default=None, description="Applies with the agent's: the tighter of each wins.")

    @model_validator(mode="after")
    def _target(self) -> WorkItemSpec:
        if not self.agent and not self.required_capabilities and not self.steps:
            raise ValueError("set agent, requiredCapabilities or steps: work must say what may run it")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("workflow step names must be unique")
        if len(names) > MAX_STEPS:
            raise ValueError(f"a workflow has at most {MAX_STEPS} steps, not {len(names)}")
        if self.steps:
            from .graph import GraphError, check_graph  # the graph's rules live with the graph (pure)

            try:
                check_graph(self.steps)
            except GraphError as exc:
                raise ValueError(str(exc)) from None
        return self

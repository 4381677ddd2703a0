"""LLM agents for tests: specs pointing at a modelsim server, and scripts built tersely."""

from __future__ import annotations

from typing import Any

from station_runtime.api.models import Agent, AgentSpec, ModelSpec, ObjectMeta
from station_runtime.contract.messages import AgentDefinition
from station_runtime.modelsim import ModelSim, Script, Step, ToolCallStep


def llm_agent(sim: ModelSim, provider: str, script: str, name: str = "assistant", *,
              model: dict[str, Any] | None = None, labels: dict[str, str] | None = None, **spec: Any) -> Agent:
    """An ``openai`` or ``anthropic`` agent whose model is the script ``script`` on ``sim``."""
    base = sim.openai_base_url if provider == "openai" else sim.anthropic_base_url
    params: dict[str, Any] = {"provider": provider, "name": script, "base_url": base,
                              "api_key_env": "TEST_MODEL_KEY", "max_retries": 2, "timeout_seconds": 10,
                              **(model or {})}
    spec.setdefault("system_prompt", "Be brief.")
    return Agent(metadata=ObjectMeta(name=name, labels=labels or {}), spec=AgentSpec(model=ModelSpec(**params),
                                                                                    **spec))


def definition(agent: Agent, org: str = "o", **kwargs: Any) -> AgentDefinition:
    return AgentDefinition(org=org, name=agent.name, spec=agent.spec, **kwargs)


def calls(*pairs: tuple[str, dict[str, Any] | str]) -> Step:
    """A turn that calls these tools, together."""
    return Step(tool_calls=tuple(ToolCallStep(n, a) for n, a in pairs))


def script(sim: ModelSim, name: str, *steps: Step | str, tokens_per_s: float | None = None) -> str:
    sim.add(Script(name, tuple(Step(text=s) if isinstance(s, str) else s for s in steps), tokens_per_s=tokens_per_s))
    return name

"""Agent executors behind one interface (:class:`~.base.Executor`)."""

from __future__ import annotations

from ..contract.messages import AgentDefinition
from .base import AgentFailure, Execution, Executor, Outcome, Progress
from .echo import EchoExecutor
from .openai import OpenAIExecutor
from .python import PythonExecutor

__all__ = ["AgentFailure", "Execution", "Executor", "Outcome", "Progress", "build_executor"]


def build_executor(definition: AgentDefinition) -> Executor:
    """The executor for an agent's ``model.provider``; raises :class:`AgentFailure` if it cannot be built."""
    provider = definition.spec.model.provider
    if provider == "echo":
        return EchoExecutor(definition)
    if provider == "python":
        return PythonExecutor(definition)
    return OpenAIExecutor(definition)

"""``echo``: returns its input. Deterministic, for tests, demos and benchmarks.

params: ``delaySeconds`` (simulated latency, reported as progress in ``steps``), ``prefix`` (prepended to a string
input), ``failWith`` (always fail with this message).
"""

from __future__ import annotations

import asyncio

from ..contract.messages import AgentDefinition, ErrorCode
from .base import AgentFailure, Execution, Outcome, Progress


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise AgentFailure(f"params.{name} must be a number, not {value!r}", ErrorCode.BAD_REQUEST)
    try:
        return float(value)
    except ValueError:
        raise AgentFailure(f"params.{name} must be a number, not {value!r}", ErrorCode.BAD_REQUEST) from None


class EchoExecutor:
    def __init__(self, definition: AgentDefinition) -> None:
        self.definition = definition
        params = definition.spec.model.params
        self.delay_s = _number(params.get("delaySeconds", 0.0), "delaySeconds")
        self.steps = max(int(_number(params.get("steps", 4), "steps")), 1)
        self.prefix = str(params.get("prefix", ""))
        self.fail_with = str(params.get("failWith", ""))

    async def run(self, execution: Execution) -> Outcome:
        if self.delay_s > 0:
            for step in range(self.steps):
                await asyncio.sleep(self.delay_s / self.steps)
                await execution.progress(Progress(percent=100.0 * (step + 1) / self.steps,
                                                  message=f"step {step + 1}/{self.steps}"))
        if self.fail_with:
            raise AgentFailure(self.fail_with)
        value = execution.input
        if self.prefix and isinstance(value, str):
            value = self.prefix + value
        return Outcome(output=value)

    async def aclose(self) -> None:
        return None

"""``ask_user``: the agent asks a person a question, and the run waits for the answer.

The loop sees the call before it runs (:meth:`~.base.ToolBox.asks_a_person`): with no reply recorded for its
idempotency key, the run suspends (AwaitingInput, no station held); ``lattice work reply ID TEXT`` records the
reply and the next attempt, resumed from the journal, runs this tool, which returns it.
"""

from __future__ import annotations

from typing import Any

from ..conversation import ToolDefinition
from .base import ToolContext, ToolResult

NAME = "ask_user"


class AskUser:
    source = "human"
    timeout_s: float | None = None
    #: Asking again (its station died before it recorded the answer) has no side effect.
    unknown_outcome = "retry"
    asks_a_person = True
    definition = ToolDefinition(
        name=NAME, description="Ask the person who runs this work a question and wait for the answer (minutes or "
        "days: the run waits without holding anything). Use it when you cannot go on without them.",
        parameters={"type": "object", "properties": {"question": {"type": "string", "maxLength": 4096,
                                                                  "description": "What to ask, plainly."}},
                    "required": ["question"], "additionalProperties": False})

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        decision = ctx.execution.decisions.get(ctx.idempotency_key)
        if decision is None or decision.reply is None:
            why = decision.reason if decision is not None else "no answer was recorded"
            return ToolResult(f"error: the person did not answer ({why}): go on without, or say what you need",
                              True)
        return ToolResult(decision.reply)

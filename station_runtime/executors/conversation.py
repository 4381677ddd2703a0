"""A provider-neutral conversation: what an agent run says to its model and hears back, turn by turn.

Each provider adapter (:mod:`.providers.openai_chat`, :mod:`.providers.anthropic_messages`) translates these to
and from its own wire format; the agent loop (:mod:`.loop`) only ever sees these. Pure data, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ..contract.messages import Usage

#: The system prompt is not a message: both APIs take it apart (OpenAI as a first message, Anthropic as a field).
Role = Literal["user", "assistant", "tool"]
#: Why a turn ended: a final answer, tool calls to run, the token limit, or a refusal/filter.
FinishReason = Literal["stop", "tool_calls", "length", "refused"]


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: its id (the provider's, echoed with the result), the tool and arguments."""

    id: str
    name: str
    #: The arguments as the model sent them: usually a JSON object; kept as text when they do not parse, so that
    #: the tool's argument check can say what is wrong instead of the loop guessing.
    arguments: dict[str, Any] | str

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True)
class Message:
    role: Role
    text: str = ""
    #: An assistant message's tool calls.
    tool_calls: tuple[ToolCall, ...] = ()
    #: A tool message: the call it answers, and whether the result is an error (the model sees both).
    tool_call_id: str = ""
    tool_name: str = ""
    is_error: bool = False


@dataclass(frozen=True)
class ToolDefinition:
    """A tool as the model is told of it: name, what it does, and the JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class Turn:
    """What one model call produced."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage = field(default_factory=Usage)
    model: str = ""

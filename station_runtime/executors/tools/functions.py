"""Python function tools: ``module:function``, its JSON schema from its type hints (through pydantic) and its
description from its docstring. Async functions are awaited; sync ones run in a thread so that a slow one cannot
stall the station. A function with a parameter named ``idempotency_key`` gets the call's key there (the same in
every attempt of the run; the model neither sees nor sets it), to do its side effect once."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ...contract.messages import ErrorCode
from ..base import AgentFailure
from ..conversation import ToolDefinition
from ..python import resolve
from .base import ToolContext, ToolResult, as_text

#: The parameter through which a function tool receives its call's idempotency key.
KEY_PARAMETER = "idempotency_key"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _arguments_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError) as exc:
        raise AgentFailure(f"tool {name}: cannot read its type hints: {exc}", ErrorCode.BAD_REQUEST) from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name == KEY_PARAMETER:
            continue
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    return create_model(f"{name}_arguments", __base__=_Strict, **fields)


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].strip()[:1024]


class FunctionTool:
    source = "function"
    timeout_s: float | None = None

    def __init__(self, target: str, name: str | None = None) -> None:
        self.fn = resolve(target)
        self.wants_key = KEY_PARAMETER in inspect.signature(self.fn).parameters
        tool_name = name or getattr(self.fn, "__name__", "") or target.rpartition(":")[2]
        self.arguments = _arguments_model(self.fn, tool_name)
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        self.definition = ToolDefinition(name=tool_name, description=_description(self.fn) or tool_name,
                                         parameters=schema)

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            parsed = self.arguments.model_validate(arguments)
        except ValidationError as exc:
            said = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()[:5])
            return ToolResult(f"error: the arguments do not match {self.definition.name}: {said}", True)
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if self.wants_key:
            kwargs[KEY_PARAMETER] = ctx.idempotency_key
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**kwargs)
        else:
            value = await asyncio.to_thread(self.fn, **kwargs)
        return ToolResult(as_text(value))

"""``python``: calls ``module:function`` with the input.

The function takes ``(input)`` or ``(input, ctx)`` where ``ctx`` is the :class:`Execution` (its ``progress``
coroutine reports progress). Async functions are awaited; sync ones run in a thread so that they cannot stall the
station's event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from ..contract.messages import AgentDefinition, ErrorCode
from .base import AgentFailure, Execution, Outcome


def resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentFailure(f"cannot import module {module_name!r} for {target!r}: {exc}",
                           ErrorCode.BAD_REQUEST) from exc
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)  # type: ignore[assignment]
        if fn is None:
            raise AgentFailure(f"{module_name!r} has no attribute {attr!r}", ErrorCode.BAD_REQUEST)
    if not callable(fn):
        raise AgentFailure(f"{target!r} is not callable", ErrorCode.BAD_REQUEST)
    return fn


class PythonExecutor:
    def __init__(self, definition: AgentDefinition) -> None:
        self.definition = definition
        assert definition.spec.model.function  # guaranteed by ModelSpec validation
        self.fn = resolve(definition.spec.model.function)
        try:
            self.wants_ctx = len(inspect.signature(self.fn).parameters) >= 2
        except (TypeError, ValueError):
            self.wants_ctx = False

    async def run(self, execution: Execution) -> Outcome:
        args: tuple[Any, ...] = (execution.input, execution) if self.wants_ctx else (execution.input,)
        try:
            if inspect.iscoroutinefunction(self.fn):
                result = await self.fn(*args)
            else:
                result = await asyncio.to_thread(self.fn, *args)
        except AgentFailure:
            raise
        except Exception as exc:  # the user's function may raise anything: it is the agent's failure, reported
            raise AgentFailure(f"{type(exc).__name__}: {exc}") from exc
        return Outcome(output=result)

    async def aclose(self) -> None:
        return None

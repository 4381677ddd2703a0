"""An agent's prompt templates (Handlebars, from ``.prompt`` files) and its input schema, applied when a run starts.

Compiled once when the agent loads; rendered per run with the work's input: a JSON object's fields, and ``input``
(the whole input, whatever its type). Values are not HTML-escaped: a prompt is not a web page (Dotprompt renders
with ``noEscape`` too).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError
from pybars import Compiler, strlist

from ..contract.messages import ErrorCode, Payload
from .base import AgentFailure

#: A rendered prompt may be at most this long (a template that loops over a large input).
MAX_RENDERED_CHARS = 1_000_000


def _raw(value: Any) -> Any:
    """Strings wrapped so that pybars does not HTML-escape them (it leaves its own string lists alone)."""
    if isinstance(value, str):
        return strlist([value])
    if isinstance(value, dict):
        return {k: _raw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_raw(v) for v in value]
    return value


class Prompting:
    """The templates and schema of one agent."""

    def __init__(self, system: str, template: str | None, input_schema: dict[str, Any] | None) -> None:
        self._system_text = system
        compiler = Compiler()
        try:
            self._template = compiler.compile(template) if template is not None else None
            self._system = compiler.compile(system) if template is not None and "{{" in system else None
        except Exception as exc:  # pybars raises PybarsError and its grammar's own errors
            raise AgentFailure(f"the agent's prompt template does not compile: {exc}", ErrorCode.BAD_REQUEST) from exc
        self._validator = None
        if input_schema is not None:
            try:
                cls = jsonschema.validators.validator_for(input_schema)
                cls.check_schema(input_schema)
            except SchemaError as exc:
                raise AgentFailure(f"inputSchema is not a valid JSON Schema: {exc.message}",
                                   ErrorCode.BAD_REQUEST) from exc
            self._validator = cls(input_schema)

    @property
    def active(self) -> bool:
        return self._template is not None or self._validator is not None

    def check(self, value: Payload) -> None:
        """Raise BAD_REQUEST when a JSON object input does not match the agent's input schema."""
        if self._validator is None:
            return
        subject: Any = value
        if isinstance(value, str):
            try:
                subject = json.loads(value)
            except ValueError:
                subject = value
        problems = sorted(self._validator.iter_errors(subject), key=lambda e: list(e.absolute_path))
        if problems:
            said = "; ".join(f"{'/'.join(map(str, p.absolute_path)) or 'input'}: {p.message}" for p in problems[:5])
            raise AgentFailure(f"the input does not match the agent's inputSchema: {said}", ErrorCode.BAD_REQUEST)

    def render(self, value: Payload) -> tuple[str, Payload]:
        """(system prompt, first user message) for a run with this input."""
        self.check(value)
        if self._template is None:
            return self._system_text, value
        subject: Any = value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
                subject = parsed if isinstance(parsed, dict) else value
            except ValueError:
                subject = value
        context = {**(subject if isinstance(subject, dict) else {}), "input": subject}
        try:
            context = _raw(context)
            system = str(self._system(context)) if self._system is not None else self._system_text
            user = str(self._template(context))
        except Exception as exc:  # a helper missing, a bad path: the caller hears which
            raise AgentFailure(f"the prompt template failed with this input: {type(exc).__name__}: {exc}",
                               ErrorCode.BAD_REQUEST) from exc
        if len(user) + len(system) > MAX_RENDERED_CHARS:
            raise AgentFailure(f"the rendered prompt is longer than {MAX_RENDERED_CHARS} characters",
                               ErrorCode.BAD_REQUEST)
        return system, user

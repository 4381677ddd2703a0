"""``anthropic``: the Messages API natively, through the official SDK: ``tool_use`` and ``tool_result`` blocks,
streamed events, stop reasons, and usage with prompt-cache reads and writes.

Usage is counted as OpenAI counts it (``input_tokens`` = every input token, cache reads and writes included) so
that one cost rule serves both providers. The API has no structured-output switch here: the answer's JSON schema
goes into the system prompt and the loop checks the answer against it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anthropic

from ...contract.messages import ErrorCode, Usage
from ...contract.specs import ModelSpec
from ...telemetry import tracing
from ..conversation import FinishReason, Message, ToolCall, Turn
from .base import ModelError, TextFn, TurnRequest, read_api_key, redact, retry_after
from .sse import broke_off, count, sse_events, tool_arguments

#: The API requires a cap on output tokens.
DEFAULT_MAX_TOKENS = 4096
_STOP: dict[str, FinishReason] = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls",
                                  "max_tokens": "length", "refusal": "refused", "pause_turn": "stop"}
#: Error types (in an error event or body) that mean "try again later".
_RETRYABLE_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
#: The error types the API documents: one of these names a failure in metrics, anything else is "stream".
_KNOWN_TYPES = _RETRYABLE_TYPES | {"invalid_request_error", "authentication_error", "permission_error",
                                   "not_found_error", "request_too_large", "billing_error"}


def to_wire(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Pure: the conversation as Messages API turns. Tool results travel in a user turn, several together."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "user":
            out.append({"role": "user", "content": m.text})
        elif m.role == "assistant":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.text}] if m.text else []
            for call in m.tool_calls:
                arguments = call.arguments if isinstance(call.arguments, dict) else {}
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
            out.append({"role": "assistant", "content": blocks or [{"type": "text", "text": ""}]})
        else:
            result = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text,
                      "is_error": m.is_error}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
    return out


def usage_of(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    read = getattr(raw, "cache_read_input_tokens", None) or 0
    written = getattr(raw, "cache_creation_input_tokens", None) or 0
    return Usage(input_tokens=(raw.input_tokens or 0) + read + written, output_tokens=raw.output_tokens or 0,
                 cached_input_tokens=read, cache_write_tokens=written)


class AnthropicMessages:
    def __init__(self, model: ModelSpec) -> None:
        self.model = model
        self._key = read_api_key(model.api_key_env, model.api_key_file, "ANTHROPIC_API_KEY")
        self.client = anthropic.AsyncAnthropic(api_key=self._key or "no-key", base_url=model.base_url,
                                               timeout=model.timeout_seconds, max_retries=model.max_retries)

    def _body(self, request: TurnRequest) -> dict[str, Any]:
        model = self.model
        system = request.system
        if request.output_schema is not None:
            system = (f"{system}\n\n" if system else "") + (
                "Give your final answer as one JSON value, nothing else, matching this JSON schema:\n"
                + json.dumps(request.output_schema))
        body: dict[str, Any] = {"model": model.name, "messages": to_wire(request.messages),
                                "max_tokens": request.max_tokens or model.max_tokens or DEFAULT_MAX_TOKENS}
        if system:
            body["system"] = system
        if request.tools:
            body["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                             for t in request.tools]
        extra: dict[str, Any] = dict(model.params)
        if model.temperature is not None:
            # This SDK no longer takes sampling parameters as arguments (newer models reject them); the API still
            # accepts them for the models that do, so it goes in the body.
            extra.setdefault("temperature", model.temperature)
        if extra:
            body["extra_body"] = extra
        if (trace_headers := tracing.headers()) is not None:  # the model call's span, to the API (W3C)
            body["extra_headers"] = trace_headers
        return body

    async def turn(self, request: TurnRequest, on_text: TextFn) -> Turn:
        body = self._body(request)
        started = False
        try:
            if not self.model.stream:
                return self._turn(await self.client.messages.create(**body))
            # The raw stream, read by sse_events (why: that module's docstring).
            async with self.client.messages.with_streaming_response.create(**body, stream=True) as response:
                started = True
                try:
                    return await self._read(response.iter_lines(), on_text)
                except (anthropic.APIError, ModelError):
                    raise
                except Exception as exc:  # the stream broke off (the HTTP client's own errors)
                    raise broke_off(exc, self._key) from exc
        except anthropic.APIError as exc:
            raise self._error(exc, started=started) from exc

    async def _read(self, lines: AsyncIterator[str], on_text: TextFn) -> Turn:
        """A streamed message: ``message_start``, content blocks (text deltas, tool input as JSON fragments),
        ``message_delta`` with the stop reason and the final usage, ``message_stop``; ``ping`` and unknown events
        (thinking blocks among them) are skipped, as the SDK's accumulator skips what it does not keep."""
        blocks: dict[int, dict[str, str]] = {}
        usage: dict[str, Any] = {}
        stop: str | None = None
        model = ""
        async for event in sse_events(lines):
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta") or {}
                block = blocks.get(_index(event))
                if block is None:
                    continue
                if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                    block["text"] += delta["text"]
                    if delta["text"]:
                        await on_text(delta["text"])
                elif delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                    block["input"] += delta["partial_json"]
            elif kind == "content_block_start":
                start = event.get("content_block") or {}
                if start.get("type") in ("text", "tool_use"):
                    blocks[_index(event)] = {"type": start["type"], "text": str(start.get("text") or ""),
                                             "id": str(start.get("id") or ""), "name": str(start.get("name") or ""),
                                             "input": ""}
            elif kind == "message_start":
                message = event.get("message") or {}
                model = str(message.get("model") or "")
                usage.update(message.get("usage") or {})
            elif kind == "message_delta":
                stop = (event.get("delta") or {}).get("stop_reason") or stop
                # The final counts: output tokens always, input and cache counts when the API gives them again.
                usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            elif kind == "error":
                error = event.get("error") or {}
                said = redact(str(error.get("message") or "error"), self._key)
                error_type = str(error.get("type") or "error")
                raise ModelError(f"model API answered {error_type}: {said}", retryable=error_type in _RETRYABLE_TYPES,
                                 code=ErrorCode.MODEL_UNAVAILABLE if error_type in _RETRYABLE_TYPES
                                 else ErrorCode.AGENT_ERROR, started=True,
                                 kind=error_type if error_type in _KNOWN_TYPES else "stream")
        if stop is None:  # no message_delta with its stop reason: the stream was cut, not finished
            raise ModelError("the model API's stream ended before the answer did (no stop_reason)",
                             retryable=True, code=ErrorCode.MODEL_UNAVAILABLE, started=True, kind="stream")
        text = "".join(b["text"] for _, b in sorted(blocks.items()) if b["type"] == "text")
        calls = [ToolCall(b["id"] or f"toolu_{i}", b["name"], tool_arguments(b["input"]))
                 for i, b in sorted(blocks.items()) if b["type"] == "tool_use"]
        reason: FinishReason = "tool_calls" if calls else _STOP.get(stop or "end_turn", "stop")
        return Turn(text=text, tool_calls=calls, finish_reason=reason, usage=_usage_from(usage), model=model)

    @staticmethod
    def _turn(message: Any) -> Turn:
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use":
                arguments = block.input if isinstance(block.input, dict) else json.dumps(block.input)
                calls.append(ToolCall(block.id, block.name, arguments))
        reason = "tool_calls" if calls else _STOP.get(message.stop_reason or "end_turn", "stop")
        return Turn(text="".join(text), tool_calls=calls, finish_reason=reason, usage=usage_of(message.usage),
                    model=message.model or "")

    def _error(self, exc: anthropic.APIError, *, started: bool) -> ModelError:
        message = redact(getattr(exc, "message", None) or str(exc), self._key)
        if isinstance(exc, anthropic.APIStatusError):
            status = exc.status_code
            kind = _error_type(exc.body)
            # Mid-stream, the SDK raises an error event with the stream's own status (200): the type decides.
            retryable = status in (408, 409, 429) or status >= 500 or kind in _RETRYABLE_TYPES
            code = ErrorCode.MODEL_UNAVAILABLE if retryable else (
                ErrorCode.BAD_REQUEST if status in (400, 404, 413, 422) else ErrorCode.AGENT_ERROR)
            shown = status if status != 200 else (kind or "error")
            return ModelError(f"model API answered {shown}: {message}", retryable=retryable, code=code,
                              status=status, kind=kind if kind in _KNOWN_TYPES else "",
                              retry_after_s=retry_after(exc.response.headers), started=started)
        if isinstance(exc, anthropic.APIConnectionError):
            return ModelError(f"cannot reach the model API: {message}", retryable=True, kind="connection",
                              code=ErrorCode.MODEL_UNAVAILABLE, started=started)
        return ModelError(f"the model API failed mid-answer: {message}", retryable=True,
                          code=ErrorCode.MODEL_UNAVAILABLE, started=started)

    async def aclose(self) -> None:
        await self.client.close()


def _index(event: dict[str, Any]) -> int:
    index = event.get("index")
    return index if isinstance(index, int) else -1


def _usage_from(raw: dict[str, Any]) -> Usage:
    """Streamed usage, counted as :func:`usage_of` counts it."""
    read, written = count(raw.get("cache_read_input_tokens")), count(raw.get("cache_creation_input_tokens"))
    return Usage(input_tokens=count(raw.get("input_tokens")) + read + written,
                 output_tokens=count(raw.get("output_tokens")), cached_input_tokens=read, cache_write_tokens=written)


def _error_type(body: object) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])
    return ""

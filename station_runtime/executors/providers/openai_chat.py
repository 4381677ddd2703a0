"""``openai``: chat completions through the official SDK, against OpenAI or any compatible server (vLLM, Ollama,
LM Studio, OpenRouter, Azure-style base URLs).

Tool calls arrive streamed as fragments keyed by their index; usage comes in a last chunk when
``stream_options.include_usage`` is set; a JSON schema for the final answer goes as ``response_format``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai

from ...contract.messages import ErrorCode, Usage
from ...contract.specs import ModelSpec
from ...telemetry import tracing
from ..conversation import FinishReason, Message, ToolCall, Turn
from .base import ModelError, TextFn, TurnRequest, read_api_key, redact, retry_after
from .sse import broke_off, count, sse_events, tool_arguments

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: OpenAI-compatible servers that need no key (Ollama, vLLM) still get one from the SDK: this placeholder.
NO_KEY = "no-key"

_FINISH: dict[str, FinishReason] = {"stop": "stop", "tool_calls": "tool_calls", "function_call": "tool_calls",
                                    "length": "length", "content_filter": "refused"}


def to_wire(system: str, messages: list[Message] | tuple[Message, ...] | Any) -> list[dict[str, Any]]:
    """Pure: the conversation as chat completion messages."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m.role == "user":
            out.append({"role": "user", "content": m.text})
        elif m.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": m.text or None}
            if m.tool_calls:
                entry["tool_calls"] = [{"id": c.id, "type": "function",
                                        "function": {"name": c.name, "arguments": c.arguments_json()}}
                                       for c in m.tool_calls]
            out.append(entry)
        else:
            # The API has no error flag on a tool result: the text says it. The tool box's own errors start with
            # "error:"; a tool's (an MCP isError result) get the same start, so the model reads both alike.
            text = m.text if not m.is_error or m.text.startswith("error:") else f"error: {m.text}"
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": text})
    return out


def usage_of(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    details = getattr(raw, "prompt_tokens_details", None)
    return Usage(input_tokens=raw.prompt_tokens or 0, output_tokens=raw.completion_tokens or 0,
                 cached_input_tokens=(getattr(details, "cached_tokens", None) or 0) if details else 0)


def _usage_from(raw: dict[str, Any]) -> Usage:
    """A streamed chunk's usage object, read defensively (a count that is not a count is left out)."""
    details = raw.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(input_tokens=count(raw.get("prompt_tokens")), output_tokens=count(raw.get("completion_tokens")),
                 cached_input_tokens=cached)


class OpenAIChat:
    def __init__(self, model: ModelSpec) -> None:
        self.model = model
        azure = model.api_version is not None
        self._key = read_api_key(model.api_key_env, model.api_key_file,
                                 "AZURE_OPENAI_API_KEY" if azure else "OPENAI_API_KEY")
        self.client: openai.AsyncOpenAI
        if azure:
            # Azure's own shape: /openai/deployments/{name}/chat/completions?api-version=..., key in api-key.
            self.client = openai.AsyncAzureOpenAI(azure_endpoint=model.base_url or "", api_version=model.api_version,
                                                  api_key=self._key or NO_KEY, timeout=model.timeout_seconds,
                                                  max_retries=model.max_retries)
        else:
            self.client = openai.AsyncOpenAI(api_key=self._key or NO_KEY, base_url=model.base_url or DEFAULT_BASE_URL,
                                             timeout=model.timeout_seconds, max_retries=model.max_retries)

    def _body(self, request: TurnRequest) -> dict[str, Any]:
        model = self.model
        body: dict[str, Any] = {"model": model.name, "messages": to_wire(request.system, request.messages)}
        if request.tools:
            body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                                "parameters": t.parameters}}
                             for t in request.tools]
        if model.temperature is not None:
            body["temperature"] = model.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.output_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": request.output_schema}}
        if model.params:
            body["extra_body"] = dict(model.params)
        if (trace_headers := tracing.headers()) is not None:  # the model call's span, to the API (W3C)
            body["extra_headers"] = trace_headers
        return body

    async def turn(self, request: TurnRequest, on_text: TextFn) -> Turn:
        body = self._body(request)
        started = False
        try:
            if not self.model.stream:
                completion = await self.client.chat.completions.create(**body)
                return self._complete(completion)
            # The raw stream, read by sse_events (why: that module's docstring).
            opened = self.client.chat.completions.with_streaming_response.create(
                **body, stream=True, stream_options={"include_usage": True})
            async with opened as response:
                started = True
                try:
                    return await self._read(response.iter_lines(), on_text)
                except (openai.APIError, ModelError):
                    raise
                except Exception as exc:  # the stream broke off (the HTTP client's own errors)
                    raise broke_off(exc, self._key) from exc
        except openai.APIError as exc:
            raise self._error(exc, started=started) from exc

    def _complete(self, completion: Any) -> Turn:
        if not completion.choices:
            raise ModelError("the model API answered with no choices", retryable=True)
        choice = completion.choices[0]
        message = choice.message
        calls = [ToolCall(c.id, c.function.name, tool_arguments(c.function.arguments or ""))
                 for c in (message.tool_calls or []) if getattr(c, "function", None) is not None]
        return Turn(text=message.content or "", tool_calls=calls,
                    finish_reason="tool_calls" if calls else _FINISH.get(choice.finish_reason or "stop", "stop"),
                    usage=usage_of(completion.usage), model=completion.model or "")

    async def _read(self, lines: AsyncIterator[str], on_text: TextFn) -> Turn:
        """A streamed completion: ``data: {chunk}`` events until ``data: [DONE]``."""
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        usage = Usage()
        model = ""
        async for chunk in sse_events(lines):
            if chunk.get("error") is not None:  # an error event in the stream, as the SDK's stream raises it
                error = chunk["error"]
                said = error.get("message") if isinstance(error, dict) else str(error)
                raise ModelError(f"the model API failed mid-answer: {redact(str(said), self._key)}",
                                 retryable=True, code=ErrorCode.MODEL_UNAVAILABLE, started=True)
            model = chunk.get("model") or model
            if isinstance(chunk.get("usage"), dict):
                usage = _usage_from(chunk["usage"])
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    text.append(content)
                    await on_text(content)
                for part in delta.get("tool_calls") or ():
                    call = calls.setdefault(int(part.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                    if part.get("id"):
                        call["id"] = part["id"]
                    function = part.get("function") or {}
                    call["name"] += function.get("name") or ""
                    call["arguments"] += function.get("arguments") or ""
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        if finish is None:  # closed cleanly mid-answer (a proxy, a restart): not an answer, a broken stream
            raise ModelError("the model API's stream ended before the answer did (no finish_reason)",
                             retryable=True, code=ErrorCode.MODEL_UNAVAILABLE, started=True, kind="stream")
        tool_calls = [ToolCall(c["id"] or f"call_{i}", c["name"], tool_arguments(c["arguments"]))
                      for i, c in sorted(calls.items())]
        reason: FinishReason = "tool_calls" if tool_calls else _FINISH.get(finish or "stop", "stop")
        return Turn(text="".join(text), tool_calls=tool_calls, finish_reason=reason, usage=usage, model=model)

    def _error(self, exc: openai.APIError, *, started: bool) -> ModelError:
        message = redact(getattr(exc, "message", None) or str(exc), self._key)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retryable = status in (408, 409, 429) or status >= 500
            code = ErrorCode.MODEL_UNAVAILABLE if retryable else (
                ErrorCode.BAD_REQUEST if status in (400, 404, 413, 422) else ErrorCode.AGENT_ERROR)
            return ModelError(f"model API answered {status}: {message}", retryable=retryable, code=code,
                              status=status,
                              retry_after_s=retry_after(exc.response.headers), started=started)
        if isinstance(exc, openai.APIConnectionError):  # the timeout error is one too
            return ModelError(f"cannot reach the model API: {message}", retryable=True, kind="connection",
                              code=ErrorCode.MODEL_UNAVAILABLE, started=started)
        # An error inside a stream (the API sent an error event, or the stream broke off).
        return ModelError(f"the model API failed mid-answer: {message}", retryable=True,
                          code=ErrorCode.MODEL_UNAVAILABLE, started=started)

    async def aclose(self) -> None:
        await self.client.close()

"""The Anthropic messages wire format: requests in, ``message`` objects and named SSE events out.

Shapes follow what api.anthropic.com sends (``message_start`` with input and cache usage, a ``ping`` after the first
block opens, ``text_delta`` / ``input_json_delta`` fragments, ``message_delta`` with the stop reason and output
tokens, ``event: error`` for a failure inside a stream), so the official SDK's stream helpers assemble it as usual.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from station_runtime.modelsim.script import Prompt, Reply

Frame = tuple[bool, bytes]
"""One piece of a streamed body; ``True`` when it carries a token (so pacing sleeps before it)."""

_ERROR_TYPES = {"bad_request": "invalid_request_error", "auth": "authentication_error",
                "permission": "permission_error", "not_found": "not_found_error",
                "request_too_large": "request_too_large", "rate_limit": "rate_limit_error", "server": "api_error",
                "overloaded": "overloaded_error"}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text(content: Any) -> str:
    """A message's (or tool result's) text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b["text"] for b in content
                         if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    return ""


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()


def _tool_input(arguments: str) -> Any:
    """A tool_use block's ``input``; scripted invalid JSON is passed on as the raw string (the real API never would)."""
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments


class AnthropicWire:
    provider = "anthropic"
    request_id_header = "request-id"

    def authorized(self, headers: Mapping[str, str]) -> bool:
        # The SDK (2.x) sends its api_key as `Authorization: Bearer`; older clients and curl send `x-api-key`.
        if headers.get("x-api-key", "").strip():
            return True
        scheme, _, key = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(key.strip())

    def unauthorized(self) -> tuple[str, str | None]:
        return "x-api-key header is required", None

    def header_problem(self, headers: Mapping[str, str]) -> str | None:
        return None if headers.get("anthropic-version") else "anthropic-version: header is required"

    def unknown_model(self, model: str) -> tuple[str, str | None]:
        return f"model: {model}", None

    def prompt(self, body: Any, raw_len: int) -> Prompt:
        """The script's view of a request; ``ValueError`` (answered with a 400) when it is not a valid one."""
        if not isinstance(body, dict):
            raise ValueError("The request body is not valid JSON: expected an object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise ValueError("max_tokens: Field required")
        if max_tokens < 1:
            raise ValueError("max_tokens: Input should be greater than or equal to 1")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages: Field required")
        first: str | None = None
        assistants, last_assistant = 0, -1
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise ValueError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if m["role"] == "assistant":
                assistants, last_assistant = assistants + 1, i
            elif first is None:
                first = _text(m.get("content"))
        results = tuple(_text(b.get("content")) for m in messages[last_assistant + 1:]
                        if isinstance(m.get("content"), list)
                        for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result")
        return Prompt(model=model, first_user_text=first or "", tool_results=results, assistant_turns=assistants,
                      max_tokens=max_tokens, stream=body.get("stream") is True, input_estimate=max(1, raw_len // 4))

    def error_body(self, kind: str, message: str, code: str | None = None) -> bytes:
        return _dumps({"type": "error", "error": {"type": _ERROR_TYPES.get(kind, "api_error"),
                                                  "message": message}}).encode()

    def completion(self, reply: Reply, model: str) -> bytes:
        content: list[dict[str, Any]] = []
        if reply.text or not reply.tool_calls:
            content.append({"type": "text", "text": reply.text})
        content.extend({"type": "tool_use", "id": c.id or _tool_id(), "name": c.name, "input": _tool_input(c.arguments)}
                       for c in reply.tool_calls)
        return _dumps({"id": _message_id(), "type": "message", "role": "assistant", "model": model,
                       "content": content, "stop_reason": _STOP_REASONS[reply.finish], "stop_sequence": None,
                       "usage": {**_input_usage(reply), "output_tokens": reply.output_tokens}}).encode()

    def stream(self, reply: Reply, model: str, body: Mapping[str, Any]) -> list[Frame]:
        """The events of a streamed message; a scripted mid-stream failure replaces the rest with ``event: error``."""
        start = {"type": "message_start",
                 "message": {"id": _message_id(), "type": "message", "role": "assistant", "model": model,
                             "content": [], "stop_reason": None, "stop_sequence": None,
                             "usage": {**_input_usage(reply), "output_tokens": 1}}}
        frames: list[Frame] = [(False, _event("message_start", start))]
        blocks: list[tuple[dict[str, Any], str, list[str]]] = []
        if reply.text or not reply.tool_calls:
            blocks.append(({"type": "text", "text": ""}, "text_delta", list(reply.tokens)))
        for call in reply.tool_calls:
            block = {"type": "tool_use", "id": call.id or _tool_id(), "name": call.name, "input": {}}
            blocks.append((block, "input_json_delta", ["", *call.fragments]))
        paced_total = sum(len(pieces) for _, _, pieces in blocks)
        cut = paced_total // 2 if reply.fail is not None else -1
        sent = 0
        for index, (block, kind, pieces) in enumerate(blocks):
            frames.append((False, _event("content_block_start",
                                         {"type": "content_block_start", "index": index, "content_block": block})))
            if index == 0:
                frames.append((False, b'event: ping\ndata: {"type":"ping"}\n\n'))
            field = "text" if kind == "text_delta" else "partial_json"
            for piece in pieces:
                if sent == cut:
                    return self._fail(frames, reply)
                sent += 1
                frames.append((True, _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                    "delta": {"type": kind, field: piece}})))
            frames.append((False, _event("content_block_stop", {"type": "content_block_stop", "index": index})))
        if reply.fail is not None:
            return self._fail(frames, reply)
        frames.append((False, _event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": _STOP_REASONS[reply.finish], "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens}})))
        frames.append((False, b'event: message_stop\ndata: {"type":"message_stop"}\n\n'))
        return frames

    def _fail(self, frames: list[Frame], reply: Reply) -> list[Frame]:
        assert reply.fail is not None
        error = self.error_body(reply.fail.kind, reply.fail.message)
        frames.append((False, b"event: error\ndata: " + error + b"\n\n"))
        return frames

    def models(self, names: Iterable[str]) -> bytes:
        data = [{"type": "model", "id": n, "display_name": n, "created_at": "2025-01-01T00:00:00Z"} for n in names]
        return _dumps({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                       "last_id": data[-1]["id"] if data else None}).encode()


def _input_usage(reply: Reply) -> dict[str, Any]:
    return {"input_tokens": reply.input_tokens, "cache_creation_input_tokens": reply.cache_write_tokens,
            "cache_read_input_tokens": reply.cached_input_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": reply.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard"}


def _message_id() -> str:
    return "msg_01" + os.urandom(11).hex()


def _tool_id() -> str:
    return "toolu_01" + os.urandom(11).hex()

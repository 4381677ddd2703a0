"""The OpenAI chat completions wire format: requests in, ``chat.completion`` objects and chunk streams out.

Shapes follow what api.openai.com sends (field order, ``null`` fields, the role-only first delta, tool calls opened
with id and name then filled by argument fragments, the ``choices: []`` usage chunk, ``data: [DONE]``), because the
point of a stand-in is that the official SDK and our provider code cannot tell it from the real thing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from station_runtime.modelsim.script import Prompt, Reply

Frame = tuple[bool, bytes]
"""One piece of a streamed body; ``True`` when it carries a token (so pacing sleeps before it)."""

# kind -> (error.type, error.code), as the real API reports them
_ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "bad_request": ("invalid_request_error", None),
    "auth": ("invalid_request_error", "invalid_api_key"),
    "permission": ("invalid_request_error", "permission_denied"),
    "not_found": ("invalid_request_error", None),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("requests", "rate_limit_exceeded"),
    "server": ("server_error", None),
    "overloaded": ("server_error", None),
}
_FINGERPRINT = "fp_modelsim"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


class OpenAIWire:
    provider = "openai"
    request_id_header = "x-request-id"

    def authorized(self, headers: Mapping[str, str]) -> bool:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        # Azure OpenAI takes the key in an api-key header instead.
        return (scheme.lower() == "bearer" and bool(key.strip())) or bool(headers.get("api-key", "").strip())

    def unauthorized(self) -> tuple[str, str | None]:
        return ("You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", None)

    def header_problem(self, headers: Mapping[str, str]) -> str | None:
        return None

    def unknown_model(self, model: str) -> tuple[str, str | None]:
        return f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"

    def prompt(self, body: Any, raw_len: int) -> Prompt:
        """The script's view of a request; ``ValueError`` (answered with a 400) when it is not a valid one."""
        if not isinstance(body, dict):
            raise ValueError("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ValueError("Missing required parameter: 'model'.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("Missing required parameter: 'messages'.")
        first: str | None = None
        assistants, last_assistant = 0, -1
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ValueError(f"Invalid value for 'messages[{i}]': expected an object with a 'role'.")
            if m["role"] == "assistant":
                assistants, last_assistant = assistants + 1, i
            elif m["role"] == "user" and first is None:
                first = _text(m.get("content"))
        results = tuple(_text(m.get("content")) for m in messages[last_assistant + 1:] if m["role"] == "tool")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        return Prompt(model=model, first_user_text=first or "", tool_results=results, assistant_turns=assistants,
                      max_tokens=limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
                      stream=body.get("stream") is True, input_estimate=max(1, raw_len // 4))

    def error_body(self, kind: str, message: str, code: str | None = None) -> bytes:
        type_, default_code = _ERROR_TYPES.get(kind, ("invalid_request_error", None))
        return _dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code or default_code}}).encode()

    def completion(self, reply: Reply, model: str) -> bytes:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": reply.text if reply.text or not reply.tool_calls else None,
                                   "refusal": None, "annotations": []}
        if reply.tool_calls:
            message["tool_calls"] = [{"id": c.id or _call_id(), "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in reply.tool_calls]
        return _dumps({"id": _completion_id(), "object": "chat.completion", "created": int(time.time()),
                       "model": model,
                       "choices": [{"index": 0, "message": message, "logprobs": None,
                                    "finish_reason": reply.finish}],
                       "usage": _usage(reply), "service_tier": "default",
                       "system_fingerprint": _FINGERPRINT}).encode()

    def stream(self, reply: Reply, model: str, body: Mapping[str, Any]) -> list[Frame]:
        """The chunks of a streamed completion; a scripted mid-stream failure replaces the rest with an error."""
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        head = (f'data: {{"id":"{_completion_id()}","object":"chat.completion.chunk","created":{int(time.time())},'
                f'"model":{_dumps(model)},"service_tier":"default","system_fingerprint":"{_FINGERPRINT}","choices":[')
        tail = ('],"usage":null}\n\n' if include_usage else "]}\n\n")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return (head + _dumps(choice) + tail).encode()

        first: dict[str, Any] = {"role": "assistant", "content": "" if reply.text or not reply.tool_calls else None,
                                 "refusal": None}
        paced = [chunk({"content": t}) for t in reply.tokens]
        for i, call in enumerate(reply.tool_calls):
            paced.append(chunk({"tool_calls": [{"index": i, "id": call.id or _call_id(), "type": "function",
                                                "function": {"name": call.name, "arguments": ""}}]}))
            paced.extend(chunk({"tool_calls": [{"index": i, "function": {"arguments": f}}]}) for f in call.fragments)
        frames: list[Frame] = [(False, chunk(first))]
        if reply.fail is not None:
            frames.extend((True, c) for c in paced[:len(paced) // 2])
            error = self.error_body(reply.fail.kind, reply.fail.message)
            frames.append((False, b"data: " + error + b"\n\n"))
            return frames
        frames.extend((True, c) for c in paced)
        frames.append((False, chunk({}, reply.finish)))
        if include_usage:
            frames.append((False, (head + '],"usage":' + _dumps(_usage(reply)) + "}\n\n").encode()))
        frames.append((False, b"data: [DONE]\n\n"))
        return frames

    def models(self, names: Iterable[str]) -> bytes:
        return _dumps({"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "modelsim"}
                                                  for n in names]}).encode()


def _usage(reply: Reply) -> dict[str, Any]:
    prompt_details = {"cached_tokens": reply.cached_input_tokens, "audio_tokens": 0}
    if reply.cache_write_tokens:  # newer API versions report cache writes too; the SDK has the field
        prompt_details["cache_write_tokens"] = reply.cache_write_tokens
    return {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens, "prompt_tokens_details": prompt_details,
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _completion_id() -> str:
    return "chatcmpl-" + os.urandom(15).hex()


def _call_id() -> str:
    return "call_" + os.urandom(12).hex()

"""``openai``: chat completions over HTTP against any OpenAI-compatible API.

The API key comes from ``apiKeyEnv`` (default ``OPENAI_API_KEY``) or ``apiKeyFile``; it is sent only in the
``Authorization`` header and never logged or echoed in errors. 429 and 5xx answers and connection errors are
retried with exponential backoff (honouring ``Retry-After``); other 4xx answers fail at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx

from ..backoff import compute_backoff
from ..contract.messages import AgentDefinition, ErrorCode
from .base import AgentFailure, Execution, Outcome, Progress

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Streamed tokens are reported as progress at most this often, so that a fast model cannot flood NATS.
PROGRESS_INTERVAL_S = 0.1


def read_api_key(env_name: str | None, file: str | None) -> str | None:
    if file:
        file = os.path.expandvars(file)  # e.g. ${LATTICE_MODEL_KEYS_DIR}/… set by the Kubernetes operator
        try:
            return Path(file).read_text().strip() or None
        except OSError as exc:
            raise AgentFailure(f"cannot read API key file {file}: {exc.strerror}", ErrorCode.BAD_REQUEST) from exc
    return os.environ.get(env_name or "OPENAI_API_KEY") or None


def _user_content(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    except ValueError:
        message = None
    return str(message or response.reason_phrase)[:300]


class OpenAIExecutor:
    def __init__(self, definition: AgentDefinition) -> None:
        self.definition = definition
        model = definition.spec.model
        self.model = model
        self.url = (model.base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(model.timeout_seconds, connect=10.0))

    def _headers(self) -> dict[str, str]:
        key = read_api_key(self.model.api_key_env, self.model.api_key_file)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, execution: Execution) -> dict[str, Any]:
        messages = []
        if self.definition.spec.system_prompt:
            messages.append({"role": "system", "content": self.definition.spec.system_prompt})
        messages.append({"role": "user", "content": _user_content(execution.input)})
        body: dict[str, Any] = {"model": self.model.name, "messages": messages, "stream": self.model.stream}
        if self.model.temperature is not None:
            body["temperature"] = self.model.temperature
        if self.model.max_tokens is not None:
            body["max_tokens"] = self.model.max_tokens
        if self.model.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def run(self, execution: Execution) -> Outcome:
        body, headers = self._body(execution), self._headers()
        attempt = 0
        while True:
            try:
                return await self._once(body, headers, execution)
            except _Retryable as exc:
                if attempt >= self.model.max_retries:
                    raise AgentFailure(f"{exc} (gave up after {attempt + 1} attempts)", ErrorCode.AGENT_ERROR) from exc
                delay = exc.retry_after_s if exc.retry_after_s is not None else compute_backoff(attempt)
                log.info("agent %s: %s; retry %d in %.2fs", self.definition.name, exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def _once(self, body: dict[str, Any], headers: dict[str, str], execution: Execution) -> Outcome:
        try:
            if body["stream"]:
                async with self._client.stream("POST", self.url, json=body, headers=headers) as response:
                    if response.status_code != 200:
                        await response.aread()
                        _raise_for(response)
                    return await _read_stream(response, execution)
            response = await self._client.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"model API timed out: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"cannot reach model API: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            _raise_for(response)
        try:
            data = response.json()
            text = data["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise AgentFailure(f"model API answered with an unexpected body: {exc!r}") from exc
        return Outcome(output=text, usage=_usage(data.get("usage")))

    async def aclose(self) -> None:
        await self._client.aclose()


class _Retryable(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


def _raise_for(response: httpx.Response) -> None:
    status = response.status_code
    detail = _error_detail(response)
    if status == 429 or status >= 500:
        retry_after = response.headers.get("retry-after")
        try:
            delay = min(float(retry_after), 60.0) if retry_after else None
        except ValueError:
            delay = None
        raise _Retryable(f"model API answered {status}: {detail}", delay)
    code = ErrorCode.BAD_REQUEST if status in (400, 404, 422) else ErrorCode.AGENT_ERROR
    raise AgentFailure(f"model API answered {status}: {detail}", code)


def _usage(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    return {k: int(v) for k, v in raw.items() if isinstance(v, int)}


async def _read_stream(response: httpx.Response, execution: Execution) -> Outcome:
    """Server-sent events: ``data: {chunk}`` lines until ``data: [DONE]``."""
    parts: list[str] = []
    pending: list[str] = []
    usage: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    last_report = loop.time()
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise AgentFailure(f"model API sent a malformed stream chunk: {payload[:80]!r}") from exc
        usage = _usage(chunk.get("usage")) or usage
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                parts.append(delta)
                pending.append(delta)
        if pending and loop.time() - last_report >= PROGRESS_INTERVAL_S:
            await execution.progress(Progress(tokens="".join(pending)))
            pending.clear()
            last_report = loop.time()
    if pending:
        await execution.progress(Progress(tokens="".join(pending)))
    return Outcome(output="".join(parts), usage=usage)

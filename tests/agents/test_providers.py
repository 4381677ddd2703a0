"""Both providers (OpenAI chat completions, Anthropic messages) through their official SDKs against modelsim:
what is sent, streaming, usage, retries, errors that say what to do and never carry the key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from station_runtime.contract.messages import ErrorCode
from station_runtime.contract.specs import ModelSpec
from station_runtime.executors import AgentFailure, Execution, Progress, load_executor
from station_runtime.modelsim import ErrorStep, ModelSim, Step
from tests.support.agents_llm import definition, llm_agent, script


def key_sent(headers: dict[str, str]) -> str:
    """The API key as sent: the Anthropic SDK (2.x) sends it as a bearer token too, older clients as x-api-key."""
    return headers.get("x-api-key") or headers["authorization"].removeprefix("Bearer ")


async def run(sim: ModelSim, provider: str, name: str, text: str = "hello there", **model: object) -> object:
    ex = await load_executor(definition(llm_agent(sim, provider, name, model=dict(model))))
    try:
        return await ex.run(Execution(input=text))
    finally:
        await ex.aclose()


async def test_a_turn_sends_system_prompt_input_model_and_key(sim: ModelSim, provider: str) -> None:
    outcome = await run(sim, provider, "echo", stream=False, temperature=0.3, max_tokens=50)
    assert outcome.output == "hello there"  # type: ignore[attr-defined]
    sent = sim.requests[0]
    assert sent.provider == provider and sent.body["model"] == "echo"
    assert sent.body["temperature"] == 0.3 and sent.body["max_tokens"] == 50
    assert key_sent(sent.headers) == "sk-test-0123456789abcdef"
    if provider == "openai":
        assert sent.body["messages"] == [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "hello there"}]
    else:
        assert sent.body["system"] == "Be brief."
        assert sent.body["messages"] == [{"role": "user", "content": "hello there"}]


async def test_streamed_tokens_arrive_as_progress_and_usage_is_counted(sim: ModelSim, provider: str) -> None:
    name = script(sim, "counted", Step(text="one two three four", input_tokens=120, output_tokens=4,
                                       cached_input_tokens=20 if provider == "openai" else 0))
    seen: list[Progress] = []

    async def progress(p: Progress) -> None:
        seen.append(p)

    ex = await load_executor(definition(llm_agent(sim, provider, name)))
    outcome = await ex.run(Execution(input="x", progress=progress))
    await ex.aclose()
    assert outcome.output == "one two three four"
    assert "".join(p.tokens for p in seen) == outcome.output
    assert len([p for p in seen if p.tokens]) == 4  # one report per streamed token, not one at the end
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens, outcome.usage.model_calls) == (120, 4, 1)
    assert sim.requests[0].body["stream"] is True


async def test_anthropic_cache_tokens_count_as_input(sim: ModelSim) -> None:
    # Anthropic reports cache reads and writes beside input_tokens; usage folds them in, as OpenAI does.
    name = script(sim, "cached", Step(text="ok", input_tokens=10, output_tokens=1, cached_input_tokens=100,
                                      cache_write_tokens=50))
    outcome = await run(sim, "anthropic", name)
    usage = outcome.usage  # type: ignore[attr-defined]
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (160, 100, 50)


async def test_cost_follows_the_price(sim: ModelSim, provider: str) -> None:
    name = script(sim, "priced", Step(text="ok", input_tokens=1_000_000, output_tokens=500_000))
    outcome = await run(sim, provider, name, price={"inputPerMillionUsd": 3, "outputPerMillionUsd": 15})
    assert outcome.usage.cost_usd == pytest.approx(3 + 7.5)  # type: ignore[attr-defined]


async def test_rate_limits_and_server_errors_are_retried(sim: ModelSim, provider: str) -> None:
    name = script(sim, "flaky", Step(text="fine", error=ErrorStep(429, retry_after_s=0, times=2)))
    outcome = await run(sim, provider, name, stream=False)
    assert outcome.output == "fine"  # type: ignore[attr-defined]
    assert len(sim.requests) == 3


async def test_retries_are_bounded_and_the_error_is_retryable(sim: ModelSim, provider: str) -> None:
    name = script(sim, "down", Step(text="never", error=ErrorStep(503, times=10)))
    with pytest.raises(AgentFailure, match="503") as exc:
        await run(sim, provider, name, max_retries=1)
    assert exc.value.code == ErrorCode.MODEL_UNAVAILABLE and exc.value.code.retryable
    assert len(sim.requests) == 2


async def test_a_failure_inside_the_stream_retries_the_turn(sim: ModelSim, provider: str) -> None:
    name = script(sim, "cut", Step(text="whole answer here", error=ErrorStep(500, mid_stream=True, times=1)))
    outcome = await run(sim, provider, name)
    assert outcome.output == "whole answer here"  # type: ignore[attr-defined]
    assert len(sim.requests) == 2


async def test_a_refused_key_fails_at_once(sim: ModelSim, provider: str) -> None:
    name = script(sim, "refusing", Step(text="never", error=ErrorStep(401, message="invalid x-api-key", times=10)))
    with pytest.raises(AgentFailure, match="401") as exc:
        await run(sim, provider, name)
    assert not exc.value.code.retryable
    assert len(sim.requests) == 1  # not retried: the same key will not work the second time


async def test_the_key_never_appears_in_an_error(sim: ModelSim, provider: str) -> None:
    secret = "sk-test-0123456789abcdef"
    name = script(sim, "quoting", Step(error=ErrorStep(400, message=f"Incorrect API key provided: {secret}")))
    with pytest.raises(AgentFailure) as exc:
        await run(sim, provider, name)
    assert secret not in str(exc.value) and secret[:12] not in str(exc.value)
    assert "[redacted]" in str(exc.value) and exc.value.code == ErrorCode.BAD_REQUEST


async def test_an_unknown_model_says_so(sim: ModelSim, provider: str) -> None:
    with pytest.raises(AgentFailure, match="404") as exc:
        await run(sim, provider, "no-such-model")
    assert exc.value.code == ErrorCode.BAD_REQUEST


async def test_an_unreachable_api_is_retried_then_fails_clearly(provider: str) -> None:
    async with ModelSim() as sim:
        agent = llm_agent(sim, provider, "echo", model={"max_retries": 1, "timeout_seconds": 2})
    # The server is closed: its port refuses connections.
    ex = await load_executor(definition(agent))
    with pytest.raises(AgentFailure, match="cannot reach the model API") as exc:
        await ex.run(Execution(input="x"))
    await ex.aclose()
    assert exc.value.code == ErrorCode.MODEL_UNAVAILABLE


async def test_api_key_from_a_file(sim: ModelSim, provider: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    outcome = await run(sim, provider, "echo", api_key_env=None, api_key_file=str(key))
    assert outcome.output == "hello there"  # type: ignore[attr-defined]
    assert key_sent(sim.requests[0].headers) == "sk-from-file"
    with pytest.raises(AgentFailure) as exc:
        await run(sim, provider, "echo", api_key_env=None, api_key_file=str(tmp_path / "missing"))
    assert exc.value.code == ErrorCode.BAD_REQUEST and "cannot read API key file" in str(exc.value)


async def test_params_go_to_the_api_as_they_are(sim: ModelSim, provider: str) -> None:
    await run(sim, provider, "echo", params={"top_p": 0.5, "seed": 7} if provider == "openai" else {"top_k": 3})
    body = sim.requests[0].body
    if provider == "openai":
        assert body["top_p"] == 0.5 and body["seed"] == 7
    else:
        assert body["top_k"] == 3


async def test_azure_openai_shape(sim: ModelSim, monkeypatch: pytest.MonkeyPatch) -> None:
    # Azure OpenAI: the deployment in the path, api-version in the query, the key in an api-key header.
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-123")
    outcome = await run(sim, "openai", "echo", base_url=sim.base_url, api_version="2024-10-21", api_key_env=None)
    assert outcome.output == "hello there"  # type: ignore[attr-defined]
    [request] = sim.requests
    assert request.path == "/openai/deployments/echo/chat/completions?api-version=2024-10-21"
    assert request.headers["api-key"] == "azure-key-123" and "authorization" not in request.headers


def test_api_version_needs_openai_and_an_endpoint() -> None:
    with pytest.raises(ValueError, match="apiVersion is for provider 'openai' on Azure OpenAI"):
        ModelSpec(provider="openai", name="gpt-4o", api_version="2024-10-21")
    with pytest.raises(ValueError, match="apiVersion"):
        ModelSpec(provider="anthropic", name="claude", base_url="http://x", api_version="2024-10-21")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_stream_closed_before_its_end_is_a_broken_stream_not_an_answer(provider: str) -> None:
    # A proxy or a restart can close a stream cleanly mid-answer: no finish_reason / stop_reason came.
    from station_runtime.executors.providers.anthropic_messages import AnthropicMessages
    from station_runtime.executors.providers.base import ModelError
    from station_runtime.executors.providers.openai_chat import OpenAIChat

    if provider == "openai":
        reader: object = OpenAIChat(ModelSpec(provider="openai", name="m", base_url="http://127.0.0.1:9"))
        lines = ['data: {"model": "m", "choices": [{"delta": {"content": "half an ans"}}]}', ""]
    else:
        reader = AnthropicMessages(ModelSpec(provider="anthropic", name="m", base_url="http://127.0.0.1:9"))
        lines = ['data: {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3}}}',
                 'data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}',
                 'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "half"}}']

    async def stream() -> AsyncIterator[str]:
        for line in lines:
            yield line

    async def ignore(_: str) -> None:
        return None

    with pytest.raises(ModelError, match="stream ended before the answer did") as exc:
        await reader._read(stream(), ignore)  # type: ignore[attr-defined]
    assert exc.value.retryable and exc.value.error_type == "stream"
    await reader.aclose()  # type: ignore[attr-defined]

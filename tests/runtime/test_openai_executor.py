"""The openai executor against a local server that speaks the OpenAI chat completions API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from station_runtime.api.models import Agent, AgentSpec, ModelSpec, ObjectMeta
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import AgentDefinition, ErrorCode
from station_runtime.executors import AgentFailure, Execution, Progress
from station_runtime.executors.openai import OpenAIExecutor
from tests.support.fake_openai import FakeOpenAI
from tests.support.lattice import running_station


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")


def agent(fake: FakeOpenAI, **model: object) -> Agent:
    params = {"provider": "openai", "name": "gpt-test", "base_url": fake.base_url, "api_key_env": "TEST_OPENAI_KEY",
              "max_retries": 2, "timeout_seconds": 5, **model}
    return Agent(metadata=ObjectMeta(name="assistant"),
                 spec=AgentSpec(system_prompt="Be brief.", model=ModelSpec(**params)))  # type: ignore[arg-type]


def executor(a: Agent) -> OpenAIExecutor:
    return OpenAIExecutor(AgentDefinition(org="o", name=a.name, spec=a.spec))


async def test_a_completion_sends_prompt_model_and_key(fake: FakeOpenAI) -> None:
    ex = executor(agent(fake, stream=False, temperature=0.3, max_tokens=50))
    outcome = await ex.run(Execution(input="hello there"))
    await ex.aclose()
    assert outcome.output == "echo: hello there"
    assert outcome.usage["total_tokens"] == 9
    sent = fake.requests[0]
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["model"] == "gpt-test" and sent.body["temperature"] == 0.3 and sent.body["max_tokens"] == 50
    assert sent.body["messages"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "hello there"}]


async def test_streaming_reports_tokens_as_progress(fake: FakeOpenAI) -> None:
    seen: list[Progress] = []

    async def progress(p: Progress) -> None:
        seen.append(p)

    ex = executor(agent(fake))
    outcome = await ex.run(Execution(input={"q": "a b c d"}, progress=progress))
    await ex.aclose()
    assert outcome.output == 'echo: {"q": "a b c d"}'
    assert "".join(p.tokens for p in seen) == outcome.output
    assert outcome.usage["completion_tokens"] > 0


async def test_rate_limits_and_server_errors_are_retried(fake: FakeOpenAI) -> None:
    fake.fail_next(429, headers={"Retry-After": "0"})
    fake.fail_next(503)
    ex = executor(agent(fake, stream=False))
    assert (await ex.run(Execution(input="x"))).output == "echo: x"
    await ex.aclose()
    assert len(fake.requests) == 3


async def test_retries_are_bounded(fake: FakeOpenAI) -> None:
    fake.fail_next(500, times=5)
    ex = executor(agent(fake, stream=False, max_retries=1))
    with pytest.raises(AgentFailure, match=r"answered 500.*gave up after 2 attempts"):
        await ex.run(Execution(input="x"))
    await ex.aclose()
    assert len(fake.requests) == 2


async def test_client_errors_fail_at_once_without_leaking_the_key(fake: FakeOpenAI,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-wrong-secret")
    ex = executor(agent(fake))
    with pytest.raises(AgentFailure) as exc:
        await ex.run(Execution(input="x"))
    await ex.aclose()
    assert "401" in str(exc.value) and "Incorrect API key" in str(exc.value)
    assert "sk-wrong-secret" not in str(exc.value)
    assert len(fake.requests) == 1


async def test_unreachable_api_is_retried_then_fails_clearly() -> None:
    a = Agent(metadata=ObjectMeta(name="a"), spec=AgentSpec(model=ModelSpec(
        provider="openai", name="m", base_url="http://127.0.0.1:9/v1", max_retries=1, timeout_seconds=2)))
    ex = executor(a)
    with pytest.raises(AgentFailure, match="cannot reach model API"):
        await ex.run(Execution(input="x"))
    await ex.aclose()


async def test_api_key_from_a_file(fake: FakeOpenAI, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-test\n")
    ex = executor(agent(fake, api_key_env=None, api_key_file=str(key), stream=False))
    assert (await ex.run(Execution(input="x"))).output == "echo: x"
    await ex.aclose()
    ex = executor(agent(fake, api_key_env=None, api_key_file=str(tmp_path / "missing")))
    with pytest.raises(AgentFailure) as exc:
        await ex.run(Execution(input="x"))
    assert exc.value.code == ErrorCode.BAD_REQUEST


async def test_an_openai_agent_runs_on_a_station(fake: FakeOpenAI, client: LatticeClient, nats_url: str,
                                                 org: str) -> None:
    await client.put_agent(agent(fake))
    async with running_station(nats_url, org, "s1"):
        result = await client.invoke("what is a lattice?", agent="assistant", timeout_s=10)
    assert result.output == "echo: what is a lattice?"
    assert result.usage["total_tokens"] == 9

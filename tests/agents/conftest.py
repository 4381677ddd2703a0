"""Agents against modelsim, the local stand-in for the OpenAI and Anthropic APIs, through the official SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from station_runtime.modelsim import ModelSim


@pytest.fixture
async def sim() -> AsyncIterator[ModelSim]:
    async with ModelSim() as server:
        yield server


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MODEL_KEY", "sk-test-0123456789abcdef")


@pytest.fixture(params=["openai", "anthropic"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)

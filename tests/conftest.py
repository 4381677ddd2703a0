"""Shared fixtures: one real nats-server for the session, a fresh org (own buckets) per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from station_runtime.client import LatticeClient
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from tests.support.limits import TEST_LIMITS

pytest_plugins = ["tests.support.kube_fixtures"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream on disk, shared by the session (tests isolate by org)."""
    # No bound of its own: it holds hundreds of small orgs (each reserves TEST_LIMITS).
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), sync_always=False, max_file_store_bytes=None,
                          monitoring=True)
    asyncio.run(server.start())
    yield server
    asyncio.run(server.stop())


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
def org() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(nats_url: str, org: str) -> AsyncIterator[LatticeClient]:
    async with LatticeClient(NatsSettings(url=nats_url), org, create_state=True, limits=TEST_LIMITS) as c:
        await c.state()
        yield c

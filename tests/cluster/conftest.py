"""A three-node cluster of real nats-servers on loopback, shared by the tests of this directory that do not kill
its members (the fault tests start their own)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from station_runtime.natsio.cluster import EmbeddedCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    c = EmbeddedCluster(3, tmp_path_factory.mktemp("cluster"), sync_always=False, max_file_store_bytes=None)
    asyncio.run(c.start())
    try:
        yield c
    finally:
        asyncio.run(c.stop())

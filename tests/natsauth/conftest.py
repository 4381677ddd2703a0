"""Fixtures for the auth tests: nats-servers in operator mode (full resolver, JetStream), tenancies, and clients
that record what the server refuses them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.client import RawCredentials

from station_runtime.natsauth import OperatorKeys, OrgAuthority, Tenancy
from station_runtime.natsio.embedded import EmbeddedNats


def start_operator_server(root: Path, authority: OrgAuthority) -> EmbeddedNats:
    """A real nats-server trusting ``authority``'s operator, with a full resolver and JetStream under ``root``."""
    server = EmbeddedNats(root, sync_always=False, extra_config=authority.server_config(root / "jwt"),
                          max_file_store_bytes=None)
    asyncio.run(server.start())
    return server


@pytest.fixture(scope="module")
def authority() -> OrgAuthority:
    # With an operator signing key: org accounts are signed by it, the identity key only signs the operator JWT.
    return OrgAuthority(OperatorKeys.generate("lattice-test", with_signing_key=True))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, authority: OrgAuthority) -> Iterator[EmbeddedNats]:
    server = start_operator_server(tmp_path_factory.mktemp("nats-operator"), authority)
    yield server
    asyncio.run(server.stop())


@pytest.fixture
async def tenancy(server: EmbeddedNats, authority: OrgAuthority) -> AsyncIterator[Tenancy]:
    async with await Tenancy.connect(server.url, authority) as tenancy:
        yield tenancy


class Observed:
    """A NATS client's asynchronous errors (permission violations arrive through ``error_cb``), awaitable."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._changed = asyncio.Condition()
        self.closed = asyncio.Event()

    async def error_cb(self, exc: Exception) -> None:
        async with self._changed:
            self.errors.append(str(exc).lower())  # nats-py lowercases the subject: compare lowercased
            self._changed.notify_all()

    async def closed_cb(self) -> None:
        self.closed.set()

    async def wait_for(self, text: str, timeout_s: float = 5.0) -> str:
        text = text.lower()
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: any(text in e for e in self.errors)), timeout_s)
        return next(e for e in self.errors if text in e)

    def violations(self) -> list[str]:
        return [e for e in self.errors if "violation" in e]


@contextlib.asynccontextmanager
async def connected(url: str, creds: str, *, inbox_prefix: str | None = None,
                    **options: Any) -> AsyncIterator[tuple[NatsClient, Observed]]:
    """A plain nats-py connection with in-memory creds; yields it with the errors it observed."""
    observed = Observed()
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    nc = await nats.connect(url, user_credentials=RawCredentials(creds), error_cb=observed.error_cb,
                            closed_cb=observed.closed_cb, max_reconnect_attempts=0, connect_timeout=2,
                            **options)
    try:
        yield nc, observed
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def write_creds(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def server_log_since(server: EmbeddedNats, offset: int) -> str:
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")

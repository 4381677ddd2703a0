"""An org's NATS account limits (``natsLimits`` of the lattice-org chart, signed into its account JWT) are
enforced by a real nats-server, and each one, when hit, is said by the lattice with the setting to raise."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import RawCredentials

from station_runtime.client import LatticeClient
from station_runtime.errors import AccountLimitError, LatticeError
from station_runtime.natsauth import AccountLimits, OrgAccount, Permissions, Tenancy
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from station_runtime.natsio.limits import explain_limit, limit_key
from station_runtime.natsio.state import OrgState, StateLimits
from tests.natsauth.conftest import connected, write_creds

pytestmark = [pytest.mark.timeout(60), pytest.mark.security]

#: The setting each limit's error names.
SETTING = "natsLimits.{} in the org's lattice-org chart"


async def _org(tenancy: Tenancy, org: str, limits: AccountLimits) -> OrgAccount:
    return await tenancy.ensure_org(org, limits)


def _creds(tenancy: Tenancy, account: OrgAccount) -> str:
    return tenancy.authority.issue_user_creds(account, "probe", Permissions.unrestricted())


async def test_connections_beyond_the_limit_are_refused_naming_the_setting(
        server: EmbeddedNats, tenancy: Tenancy, tmp_path: Path) -> None:
    account = await _org(tenancy, "lim-conn", AccountLimits(conn=1))
    creds = write_creds(tmp_path / "admin.creds", tenancy.issue_admin_creds(account))
    settings = NatsSettings(url=server.url, creds_file=creds, max_reconnect_attempts=2)
    async with LatticeClient(settings, "lim-conn"):
        with pytest.raises(LatticeError, match=SETTING.format("connections")) as refused:
            await LatticeClient(settings, "lim-conn").connect()
        assert "maximum account active connections exceeded" in str(refused.value)


async def test_state_that_does_not_fit_the_storage_limit_is_refused_naming_the_setting(
        server: EmbeddedNats, tenancy: Tenancy) -> None:
    # The org's buckets and streams reserve their bounds at creation (about 2.3 GiB with the defaults).
    account = await _org(tenancy, "lim-disk", AccountLimits(disk_storage=StateLimits().total_bytes() // 2))
    async with connected(server.url, tenancy.issue_admin_creds(account)) as (nc, _):
        with pytest.raises(AccountLimitError, match=SETTING.format("jetstreamDiskBytes")):
            await OrgState.open(nc, "lim-disk", create=True)


async def test_streams_and_consumers_beyond_the_limit_are_refused(server: EmbeddedNats, tenancy: Tenancy) -> None:
    account = await _org(tenancy, "lim-js", AccountLimits(streams=7, consumer=2))
    async with connected(server.url, _creds(tenancy, account)) as (nc, _):
        state = await OrgState.open(nc, "lim-js", create=True)  # its 7 streams fit
        await state.results()
        await state.tool_servers()
        js = nc.jetstream()
        with pytest.raises(nats.js.errors.APIError) as streams:
            await js.add_stream(name="one-more", subjects=["one.more"], max_bytes=1024)
        assert limit_key(str(streams.value.description)) == "streams"
        stream = "KV_lattice-lim-js-work"
        for name in ("first", "second"):
            await js.add_consumer(stream, durable_name=name)
        with pytest.raises(nats.js.errors.APIError) as consumers:
            await js.add_consumer(stream, durable_name="third")
        said = explain_limit(str(consumers.value.description))
        assert said is not None and SETTING.format("consumers") in said


async def test_subscriptions_and_payload_beyond_the_limit_are_logged_naming_the_setting(
        server: EmbeddedNats, tenancy: Tenancy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server answers both with an error that makes nats-py close the connection for good: the lattice's
    log says which limit it was."""
    account = await _org(tenancy, "lim-subs", AccountLimits(subs=5, payload=64 * 1024))
    creds = write_creds(tmp_path / "probe.creds", _creds(tenancy, account))
    settings = NatsSettings(url=server.url, creds_file=creds, max_reconnect_attempts=0)
    with caplog.at_level(logging.ERROR, logger="station_runtime.natsio.connect"):
        async with LatticeClient(settings, "lim-subs") as client:
            nc = client.connection()
            # The sixth subscription is refused and nats-py closes the connection, asynchronously: the flush
            # after it meets a closed connection or times out waiting, depending on which comes first.
            with contextlib.suppress(nats.errors.Error):
                for i in range(8):
                    await nc.subscribe(f"probe.{i}")
                    await nc.flush(timeout=2)
            await _said(caplog, SETTING.format("subscriptions"))
            assert nc.is_closed
        async with LatticeClient(settings, "lim-subs") as client:
            nc = client.connection()
            with contextlib.suppress(nats.errors.Error, OSError):  # the server drops the connection
                await nc.publish("probe.big", b"x" * (128 * 1024))
                await nc.flush(timeout=2)
            await _said(caplog, SETTING.format("payloadBytes"))


async def _said(caplog: pytest.LogCaptureFixture, text: str) -> None:
    from tests.support.waiting import eventually

    async def logged() -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    await eventually(logged, timeout_s=10, what=f"a log line naming {text} (got {caplog.messages})")


async def test_an_unlimited_account_is_the_default(tenancy: Tenancy, server: EmbeddedNats) -> None:
    account = await _org(tenancy, "lim-none", AccountLimits())
    nc = await nats.connect(server.url, user_credentials=RawCredentials(_creds(tenancy, account)))
    try:
        await OrgState.open(nc, "lim-none", create=True)
    finally:
        await nc.close()

"""Pushing org accounts to a real nats-server in operator mode (full resolver): what is pushed is confirmed and
usable at once, pushes are idempotent, foreign-signed accounts never leave the provisioner, the server's own
refusals surface with its description, and revocation cuts a live user off."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import nkeys
import pytest

from station_runtime.natsauth import (
    AccountLimits,
    AccountProvisioner,
    JwtError,
    KeyPair,
    KeyRole,
    OperatorKeys,
    OrgAuthority,
    Permissions,
    PushRejectedError,
    ResolverUnavailableError,
    Tenancy,
    UntrustedIssuerError,
    claims,
    jwt,
    user_public_key,
)
from station_runtime.natsio.embedded import EmbeddedNats
from tests.natsauth.conftest import connected, start_operator_server
from tests.natsauth.test_keys_and_jwt import ACCOUNT_SEED, GOLDEN_IAT, GOLDEN_OPERATOR_JWT, OPERATOR_SEED

pytestmark = pytest.mark.timeout(60)


async def test_a_pushed_account_is_confirmed_and_usable_at_once(server: EmbeddedNats, tenancy: Tenancy) -> None:
    account = await tenancy.ensure_org("pushed")
    assert await tenancy.provisioner.lookup(account.public_key) == account.jwt
    assert account.public_key in await tenancy.provisioner.list_accounts()
    # A user of the new account connects and uses JetStream (the limits enable it) without any wait.
    async with connected(server.url, tenancy.authority.issue_user_creds(account, "probe",
                                                                        Permissions.unrestricted())) as (nc, _):
        kv = await nc.jetstream().create_key_value(bucket="probe")
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"


async def test_ensure_org_is_idempotent_and_pushing_twice_is_harmless(tenancy: Tenancy) -> None:
    first = await tenancy.ensure_org("idem")
    pushes = tenancy.provisioner.pushes
    again = await tenancy.ensure_org("idem", account_key=first.key)
    assert again.jwt == first.jwt and tenancy.provisioner.pushes == pushes  # same claims: nothing pushed
    await tenancy.provisioner.push(first.jwt)
    await tenancy.provisioner.push(first.jwt)
    assert await tenancy.provisioner.lookup(first.public_key) == first.jwt
    changed = await tenancy.ensure_org("idem", AccountLimits(conn=50), account_key=first.key)
    assert changed.public_key == first.public_key and changed.jwt != first.jwt
    assert jwt.decode(changed.jwt).nats["limits"]["conn"] == 50
    assert await tenancy.provisioner.lookup(first.public_key) == changed.jwt


async def test_a_foreign_operators_account_is_refused_before_the_push(tenancy: Tenancy) -> None:
    ours = await tenancy.ensure_org("victim")
    foreign = OrgAuthority(OperatorKeys.generate("foreign"))
    pushes = tenancy.provisioner.pushes
    # A new account signed by another operator: never sent, so the resolver does not hold it.
    stranger = foreign.org_account("stranger")
    with pytest.raises(UntrustedIssuerError, match="not trusted"):
        await tenancy.provisioner.push(stranger.jwt)
    assert await tenancy.provisioner.lookup(stranger.public_key) is None
    # The same over our org's account (the server would answer 200 and break the account on its next restart).
    hijack = foreign.org_account("victim", account_key=ours.key)
    with pytest.raises(UntrustedIssuerError):
        await tenancy.provisioner.push(hijack.jwt)
    self_signed = jwt.issue(claims.account_claims(ours.public_key, "victim"), ours.key)
    with pytest.raises(JwtError):
        await tenancy.provisioner.push(self_signed)
    assert tenancy.provisioner.pushes == pushes
    assert await tenancy.provisioner.lookup(ours.public_key) == ours.jwt


async def test_the_servers_refusal_surfaces_with_its_description(tenancy: Tenancy) -> None:
    """A JWT that passes our checks (trusted issuer, usable limits) but that the server cannot decode."""
    authority = tenancy.authority
    key = KeyPair.generate(KeyRole.ACCOUNT)
    body = claims.account_claims(key.public_key, "broken")
    body["nats"]["limits"]["data"] = "lots"
    assert authority.keys.signing_key is not None
    token = jwt.issue(body, authority.keys.signing_key)
    with pytest.raises(PushRejectedError) as caught:
        await tenancy.provisioner.push(token)
    assert caught.value.code == 500
    assert caught.value.description.startswith("jwt update resulted in error")
    assert "unmarshal" in caught.value.description
    assert token not in str(caught.value)


async def test_without_a_resolver_the_provisioner_says_so(tenancy: Tenancy, server: EmbeddedNats) -> None:
    """A connection that is not a system-account user gets no answer on the claims subjects."""
    account = await tenancy.ensure_org("nosys")
    async with connected(server.url, tenancy.authority.issue_user_creds(account, "probe",
                                                                        Permissions.unrestricted())) as (nc, _):
        provisioner = AccountProvisioner(nc, tenancy.authority.trusted_issuers, timeout_s=0.5)
        with pytest.raises(ResolverUnavailableError, match="resolver"):
            await provisioner.push(account.jwt)


async def test_users_without_permissions_in_their_jwt_get_none(tenancy: Tenancy, server: EmbeddedNats) -> None:
    """The account's default permissions deny everything: a user JWT issued without lists can do nothing."""
    account = await tenancy.ensure_org("defaults")
    user = KeyPair.generate(KeyRole.USER)
    body = claims.user_claims(user.public_key, "bare", Permissions())
    del body["nats"]["pub"], body["nats"]["sub"]
    text = claims.creds(jwt.issue(body, account.key), user.seed)
    async with connected(server.url, text) as (nc, observed):
        await nc.publish("lattice.v1.defaults.anything", b"x")
        assert "permissions violation for publish" in await observed.wait_for("violation")


async def test_revoking_a_user_disconnects_it_and_keeps_it_out(tenancy: Tenancy, server: EmbeddedNats) -> None:
    account = await tenancy.ensure_org("revoke")
    doomed = tenancy.issue_station_creds(account, "s1")
    async with connected(server.url, doomed, inbox_prefix="_INBOX_s1", allow_reconnect=False) as (nc, observed):
        assert nc.is_connected
        account = await tenancy.ensure_org("revoke", account_key=account.key, revoke=[user_public_key(doomed)])
        await asyncio.wait_for(observed.closed.wait(), 5)
    with pytest.raises(Exception, match="Authorization Violation"):
        async with connected(server.url, doomed, allow_reconnect=False):
            pass
    # The revocation is carried forward by later reconciles that do not mention it.
    again = await tenancy.ensure_org("revoke", account_key=account.key)
    assert user_public_key(doomed) in jwt.decode(again.jwt).nats["revocations"]
    # The station's next creds (a new user key) work.
    async with connected(server.url, tenancy.issue_station_creds(account, "s1"), inbox_prefix="_INBOX_s1") as (nc, _):
        assert nc.is_connected


@pytest.fixture(scope="module")
def golden_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, OrgAuthority]]:
    keys = OperatorKeys(operator=KeyPair.from_seed(OPERATOR_SEED), system_account=KeyPair.from_seed(ACCOUNT_SEED),
                        name="golden")
    authority = OrgAuthority(keys, now=GOLDEN_IAT)
    assert authority.operator_jwt == GOLDEN_OPERATOR_JWT
    server = start_operator_server(tmp_path_factory.mktemp("nats-golden"), authority)
    yield server, authority
    asyncio.run(server.stop())


async def test_the_golden_operator_token_runs_a_server_with_identity_signed_accounts(
        golden_server: tuple[EmbeddedNats, OrgAuthority], tmp_path: Path) -> None:
    """The golden vector is known-good: a real server trusts it, and accounts signed by the operator identity
    key (no signing key) are pushed and used."""
    server, authority = golden_server
    async with await Tenancy.connect(server.url, authority) as tenancy:
        account = await tenancy.ensure_org("golden")
        assert jwt.decode(account.jwt).issuer == nkeys.from_seed(bytearray(OPERATOR_SEED.encode())).public_key.decode()
        creds_file = tmp_path / "admin.creds"
        creds_file.write_text(tenancy.issue_admin_creds(account))
        nc = await nats.connect(server.url, user_credentials=str(creds_file))
        try:
            sub = await nc.subscribe("lattice.v1.golden.presence.*")
            await nc.publish("lattice.v1.golden.presence.heartbeat", b"beat")
            assert (await sub.next_msg(timeout=2)).data == b"beat"
        finally:
            await nc.close()


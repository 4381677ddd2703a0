"""Pure: claim shapes, account limits, the station/admin permission sets, creds text, server config, the
pre-push account checks, resolver replies, and the secret data of keys."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from station_runtime.contract.errors import InvalidIdError
from station_runtime.contract.messages import InvokeRequest
from station_runtime.natsauth import (
    AccountLimits,
    JwtError,
    KeyPair,
    KeyRole,
    OperatorKeys,
    OrgAccount,
    OrgAuthority,
    Permissions,
    PushRejectedError,
    UntrustedIssuerError,
    check_account_jwt,
    claims,
    creds,
    jwt,
    org_admin_permissions,
    parse_creds,
    parse_update_reply,
    results_bucket,
    server,
    station_inbox_prefix,
    station_permissions,
    user_public_key,
)
from station_runtime.natsauth.checks import same_claims
from station_runtime.work.store import WorkStore

# --- account limits --------------------------------------------------------------------------------------------


def test_default_account_limits_are_unlimited_with_jetstream_on() -> None:
    limits = AccountLimits().to_claims()
    assert limits["conn"] == limits["subs"] == limits["payload"] == -1
    assert limits["mem_storage"] == limits["disk_storage"] == -1


@pytest.mark.parametrize("bad", [
    {"conn": 0}, {"subs": 0}, {"payload": 0}, {"payload": -5}, {"streams": 0}, {"consumer": 0},
    {"disk_storage": 0}, {"mem_storage": -2}, {"streams": 4},
])
def test_account_limits_that_would_break_the_org_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        AccountLimits(**bad)


def test_memory_storage_may_be_off_when_disk_storage_is_on() -> None:
    assert AccountLimits(mem_storage=0, disk_storage=1 << 30, streams=7).to_claims()["mem_storage"] == 0


def test_system_account_claims_have_no_jetstream() -> None:
    key = KeyPair.generate(KeyRole.ACCOUNT)
    limits = claims.account_claims(key.public_key, "SYS", jetstream=False)["nats"]["limits"]
    assert "mem_storage" not in limits and "disk_storage" not in limits and limits["conn"] == -1


def test_account_claims_deny_users_without_permissions_and_carry_revocations() -> None:
    key, user = KeyPair.generate(KeyRole.ACCOUNT), KeyPair.generate(KeyRole.USER)
    nats = claims.account_claims(key.public_key, "acme", revocations={user.public_key: 7, "*": 3})["nats"]
    assert nats["default_permissions"] == {"pub": {"deny": [">"]}, "sub": {"deny": [">"]}}
    assert nats["revocations"] == {"*": 3, user.public_key: 7}
    with pytest.raises(ValueError):
        claims.account_claims(key.public_key, "acme", revocations={key.public_key: 1})


# --- permissions ------------------------------------------------------------------------------------------------


def test_an_empty_allow_list_means_nothing_not_everything() -> None:
    assert Permissions().to_claims() == {"pub": {"deny": [">"]}, "sub": {"deny": [">"]}}
    assert Permissions.unrestricted().to_claims() == {"pub": {"allow": [">"]}, "sub": {"allow": [">"]}}


def test_station_permissions_are_bound_to_its_own_name() -> None:
    perms = station_permissions("acme", "s1")
    pub, sub = set(perms.pub_allow), set(perms.sub_allow)
    # Receives only what is addressed to it (its auctions too), its own inbox, (for children it delegated) work
    # records and progress, which it can read from the work bucket anyway, and the agents' republished changes.
    assert sub == {"lattice.v1.acme.station.s1.>", "_INBOX_s1.>", "lattice.v1.acme.work.*.*",
                   "lattice.v1.acme.agents.*"}
    # Writes only its own presence key; no wildcard write into the stations bucket.
    assert "$KV.lattice-acme-stations.s1" in pub
    assert not any(s.startswith("$KV.lattice-acme-stations.") and s != "$KV.lattice-acme-stations.s1" for s in pub)
    assert "$JS.API.DIRECT.GET.KV_lattice-acme-stations.$KV.lattice-acme-stations.s1" in pub
    # No agent definitions written, no stream created, updated or deleted, no other station's subjects.
    assert not any(s.startswith("$KV.lattice-acme-agents") for s in pub)
    assert not any(verb in s for s in pub for verb in (".STREAM.CREATE.", ".STREAM.UPDATE.", ".STREAM.DELETE.",
                                                        ".CONSUMER.DELETE.", "$JS.API.>", "$JS.API.INFO"))
    # No consumer of any stream (its deliver subject could be another station's) and no purge.
    assert not any(".CONSUMER." in s or ".PURGE." in s or s.startswith("$JS.FC.") for s in pub)
    # Delegating, it writes its children's records: the controller places them, not the station.
    assert not any(s.startswith("lattice.v1.acme.station.") for s in pub)
    assert not any(s in (">", "_INBOX.>", "lattice.v1.acme.>") for s in pub | sub)
    # Everything stays inside the org's names.
    org_names = ("lattice.v1.acme.", "lattice-acme-", "_INBOX_s1.", "$JS.FC.KV_lattice-acme-")
    assert all(any(name in s for name in org_names) for s in pub | sub), sorted(pub | sub)
    assert perms.responses is not None and perms.responses.max_msgs == 1


def test_station_permission_lists_have_no_duplicates_and_valid_ids() -> None:
    perms = station_permissions("acme", "s1")
    assert len(set(perms.pub_allow)) == len(perms.pub_allow) and len(set(perms.sub_allow)) == len(perms.sub_allow)
    for org, station in (("ac.me", "s1"), ("acme", "s*"), ("acme", "s1.>")):
        with pytest.raises(InvalidIdError):
            station_permissions(org, station)


def test_the_response_ttl_covers_the_longest_invoke() -> None:
    """Without an explicit ttl the server allows a reply for 2 minutes only; invokes may run up to their timeout."""
    longest_invoke_s = next(m.le for m in InvokeRequest.model_fields["timeout_s"].metadata if hasattr(m, "le"))
    ttl = station_permissions("acme", "s1").to_claims()["resp"]["ttl"]
    assert ttl >= (longest_invoke_s + 60) * 1_000_000_000


def test_admin_permissions_cover_the_org_and_nothing_of_another_org() -> None:
    perms = org_admin_permissions("acme")
    assert {"lattice.v1.acme.>", "$JS.API.>"} <= set(perms.pub_allow)
    assert set(perms.sub_allow) == {"lattice.v1.acme.>", "_INBOX.>"}
    assert not any("beta" in s or s == ">" for s in perms.pub_allow + perms.sub_allow)


def test_inbox_prefix_and_results_bucket_match_the_runtime() -> None:
    assert station_inbox_prefix("s-1_x") == "_INBOX_s-1_x"
    state = SimpleNamespace(org="acme", work=None)
    assert results_bucket("acme") == WorkStore(state)._results_bucket  # type: ignore[arg-type]


def test_user_claims_have_the_required_limits() -> None:
    user, account = KeyPair.generate(KeyRole.USER), KeyPair.generate(KeyRole.ACCOUNT)
    out = claims.user_claims(user.public_key, "s1", station_permissions("acme", "s1"), expires_at=99)
    assert out["exp"] == 99
    assert out["nats"]["subs"] == out["nats"]["payload"] == -1 and out["nats"]["type"] == "user"
    signed_by_key = claims.user_claims(user.public_key, "s1", Permissions(), issuer_account=account.public_key)
    assert signed_by_key["nats"]["issuer_account"] == account.public_key
    with pytest.raises(ValueError):
        claims.user_claims(account.public_key, "s1", Permissions())


# --- creds ------------------------------------------------------------------------------------------------------


def test_creds_text_is_what_nats_py_parses() -> None:
    text = creds("aaa.bbb.ccc", "SUXYZ")
    lines = text.split("\n")
    assert "\r" not in text and text.endswith("\n")
    assert lines[lines.index("-----BEGIN NATS USER JWT-----") + 1] == "aaa.bbb.ccc"
    assert lines[lines.index("-----BEGIN USER NKEY SEED-----") + 1] == "SUXYZ"
    parsed = parse_creds(text)
    assert (parsed.jwt, parsed.seed) == ("aaa.bbb.ccc", "SUXYZ")
    assert "SUXYZ" not in repr(parsed) and "aaa.bbb" not in repr(parsed)
    with pytest.raises(ValueError):
        creds("a\nb", "SU")
    with pytest.raises(ValueError):
        parse_creds("no creds here")


# --- the authority ----------------------------------------------------------------------------------------------


def test_operator_keys_round_trip_through_secret_data() -> None:
    keys = OperatorKeys.generate("ops", with_signing_key=True)
    data = keys.to_secret_data()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
    assert set(data) == {"operator-name", "operator-seed", "operator-public-key", "system-account-seed",
                         "system-account-public-key", "operator-signing-key-seed",
                         "operator-signing-key-public-key", "issued-at"}
    assert OperatorKeys.from_secret_data(data) == keys
    # The same keys render the same server config on every start.
    restored = OrgAuthority(OperatorKeys.from_secret_data(data))
    assert restored.server_config("/d") == OrgAuthority(keys).server_config("/d")
    assert keys.operator.seed not in repr(keys) and keys.system_account.seed not in repr(keys)
    with pytest.raises(ValueError, match="does not belong"):
        OperatorKeys.from_secret_data({**data, "operator-public-key": KeyPair.generate(KeyRole.OPERATOR).public_key})


def test_org_accounts_round_trip_and_hide_their_secrets() -> None:
    authority = OrgAuthority(OperatorKeys.generate())
    account = authority.org_account("acme")
    assert OrgAccount.from_secret_data(account.to_secret_data()) == account
    assert account.jwt not in repr(account) and account.key.seed not in repr(account)
    assert "seed" not in repr(authority) and authority.keys.operator.seed not in repr(authority)


def test_accounts_are_signed_by_the_signing_key_when_there_is_one() -> None:
    plain = OrgAuthority(OperatorKeys.generate())
    with_sk = OrgAuthority(OperatorKeys.generate(with_signing_key=True))
    assert jwt.decode(plain.org_account("acme").jwt).issuer == plain.keys.operator.public_key
    assert with_sk.keys.signing_key is not None
    assert jwt.decode(with_sk.org_account("acme").jwt).issuer == with_sk.keys.signing_key.public_key
    assert jwt.decode(with_sk.operator_jwt).nats["signing_keys"] == [with_sk.keys.signing_key.public_key]
    assert with_sk.trusted_issuers == {with_sk.keys.operator.public_key, with_sk.keys.signing_key.public_key}


def test_station_creds_carry_the_station_permissions_signed_by_the_account() -> None:
    authority = OrgAuthority(OperatorKeys.generate())
    account = authority.org_account("acme")
    text = authority.issue_station_creds(account, "s1")
    token = jwt.verify(parse_creds(text).jwt, {account.public_key})
    assert token.subject == user_public_key(text)
    assert token.claims["name"] == "station-s1"
    assert token.nats["pub"]["allow"] == list(station_permissions("acme", "s1").pub_allow)
    assert KeyPair.from_seed(parse_creds(text).seed).public_key == token.subject
    # A fresh user key every time: revoking one set of creds leaves the next one valid.
    assert user_public_key(authority.issue_station_creds(account, "s1")) != token.subject


def test_system_user_may_only_manage_claims_by_default() -> None:
    authority = OrgAuthority(OperatorKeys.generate())
    token = jwt.verify(parse_creds(authority.system_user_creds()).jwt, {authority.keys.system_account.public_key})
    assert all(s.startswith("$SYS.REQ.") and "CLAIMS" in s for s in token.nats["pub"]["allow"])


# --- server config ----------------------------------------------------------------------------------------------


def test_server_config_has_the_four_operator_mode_pieces() -> None:
    authority = OrgAuthority(OperatorKeys.generate())
    sys_key = authority.keys.system_account.public_key
    text = authority.server_config("/var/lib/nats/jwt")
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 4
    assert lines[0] == f'operator: "{authority.operator_jwt}"'
    assert lines[1] == f'system_account: "{sys_key}"'
    assert lines[2] == 'resolver: {type: full, dir: "/var/lib/nats/jwt", allow_delete: false, interval: "2m"}'
    assert lines[3] == f'resolver_preload: {{{sys_key}: "{authority.system_account_jwt}"}}'
    assert server.resolver_block("/d", interval="30s", allow_delete=True) == \
        'resolver: {type: full, dir: "/d", allow_delete: true, interval: "30s"}'


# --- checks before a push ---------------------------------------------------------------------------------------


def _signed_account(signer: KeyPair, **changes: Any) -> str:
    key = KeyPair.generate(KeyRole.ACCOUNT)
    body = claims.account_claims(key.public_key, "acme")
    body.update(changes)
    return jwt.issue(body, signer)


def test_check_account_jwt_accepts_ours() -> None:
    operator = KeyPair.generate(KeyRole.OPERATOR)
    assert check_account_jwt(_signed_account(operator), {operator.public_key}).claim_type == "account"


def test_check_account_jwt_refuses_what_the_resolver_would_store_and_break() -> None:
    operator, foreign = KeyPair.generate(KeyRole.OPERATOR), KeyPair.generate(KeyRole.OPERATOR)
    trusted = {operator.public_key}
    with pytest.raises(UntrustedIssuerError):
        check_account_jwt(_signed_account(foreign), trusted)
    self_key = KeyPair.generate(KeyRole.ACCOUNT)
    self_signed = jwt.issue(claims.account_claims(self_key.public_key, "acme"), self_key)
    with pytest.raises(UntrustedIssuerError):
        check_account_jwt(self_signed, trusted)
    with pytest.raises(JwtError, match="self-signed"):
        check_account_jwt(self_signed, {self_key.public_key})
    with pytest.raises(JwtError, match="expired"):
        check_account_jwt(_signed_account(operator, exp=1), trusted)
    no_limits = _signed_account(operator, nats={"type": "account", "version": 2})
    with pytest.raises(JwtError, match="conn"):
        check_account_jwt(no_limits, trusted)
    with pytest.raises(JwtError, match="version"):
        check_account_jwt(_signed_account(operator, nats={"type": "account", "limits": {}}), trusted)
    user = KeyPair.generate(KeyRole.USER)
    user_jwt = jwt.issue(claims.user_claims(user.public_key, "u", Permissions()), operator)
    with pytest.raises(JwtError, match="not an account JWT"):
        check_account_jwt(user_jwt, trusted)
    wrong_subject = jwt.issue({**claims.account_claims(KeyPair.generate(KeyRole.ACCOUNT).public_key, "x"),
                               "sub": user.public_key}, operator)
    with pytest.raises(JwtError, match="not an account key"):
        check_account_jwt(wrong_subject, trusted)


def test_same_claims_ignores_only_jti_and_iat() -> None:
    operator = KeyPair.generate(KeyRole.OPERATOR)
    key = KeyPair.generate(KeyRole.ACCOUNT)
    first = jwt.decode(jwt.issue(claims.account_claims(key.public_key, "acme"), operator, now=1))
    again = jwt.decode(jwt.issue(claims.account_claims(key.public_key, "acme"), operator, now=2))
    bigger = jwt.decode(jwt.issue(claims.account_claims(key.public_key, "acme", AccountLimits(conn=10)), operator))
    assert same_claims(first, again) and not same_claims(first, bigger)


# --- resolver replies (shapes recorded from nats-server 2.15.1) -------------------------------------------------

_SERVER = {"name": "n1", "host": "127.0.0.1", "id": "NABC", "ver": "2.15.1", "jetstream": True}


def test_a_success_reply_is_parsed() -> None:
    data = json.dumps({"server": _SERVER, "data": {"account": "AXYZ", "code": 200, "message": "jwt updated"}})
    reply = parse_update_reply(data.encode(), "AXYZ")
    assert (reply.account, reply.code, reply.message, reply.server) == ("AXYZ", 200, "jwt updated", "n1")


def test_an_error_reply_raises_with_the_server_description() -> None:
    description = "jwt update resulted in error - claim failed V2 signature verification"
    data = json.dumps({"server": _SERVER, "error": {"account": "n/a", "code": 500, "description": description}})
    with pytest.raises(PushRejectedError) as caught:
        parse_update_reply(data.encode(), "AXYZ")
    assert caught.value.code == 500 and caught.value.description == description
    assert description in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"server": {}}',
                                  b'{"data": {"account": "A", "code": 404, "message": "nope"}}'])
def test_unexpected_replies_raise(data: bytes) -> None:
    with pytest.raises(PushRejectedError):
        parse_update_reply(data, "AXYZ")

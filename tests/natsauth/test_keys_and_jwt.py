"""Pure: nkeys (generation, encoding, checksums, roles, secrecy) and JWT encoding, decoding and verification,
pinned by a golden vector."""

from __future__ import annotations

import base64
import hashlib
import json

import nacl.signing
import nkeys
import pytest

from station_runtime.natsauth import InvalidKeyError, JwtError, KeyPair, KeyRole, UntrustedIssuerError, claims, jwt
from station_runtime.natsauth.keys import check_public_key, decode_public_key, verify_signature

# Fixed seeds: 32 known bytes per role.
OPERATOR_SEED = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_OPERATOR).decode()
ACCOUNT_SEED = nkeys.encode_seed(bytes(range(32, 64)), nkeys.PREFIX_BYTE_ACCOUNT).decode()
USER_SEED = nkeys.encode_seed(bytes(range(64, 96)), nkeys.PREFIX_BYTE_USER).decode()
GOLDEN_IAT = 1_700_000_000

#: operator_claims(operator, "golden", account) issued by the operator at GOLDEN_IAT. The integration tests start
#: a real nats-server trusting exactly this token, so it is known-good, not just known-stable.
GOLDEN_OPERATOR_JWT = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ."
    "eyJqdGkiOiJaNE1TSzNDNEgzTElRR1MzQVRPMktEWUpBWjVSU09GRVpOUk1WQkhPSU40MzNTV1BOT1hRIiwiaWF0IjoxNzAwMDAwMDAw"
    "LCJpc3MiOiJPQUIyQ0I1NzZQSEJCUFE1T0RPUlJaMkxZQ01XUFpHV0dDTjJLREs3RFhPSU1aQVNLVVkzUVpWVCIsInN1YiI6Ik9BQjJD"
    "QjU3NlBIQkJQUTVPRE9SUloyTFlDTVdQWkdXR0NOMktESzdEWE9JTVpBU0tVWTNRWlZUIiwibmFtZSI6ImdvbGRlbiIsIm5hdHMiOnsi"
    "dHlwZSI6Im9wZXJhdG9yIiwidmVyc2lvbiI6Miwic3lzdGVtX2FjY291bnQiOiJBQVUyWk9YQklHNk1WNEZTRllOSkpVMk5CUERUTUhT"
    "U05VRjc0RVdJUzZLTFpFWkNTWlc1T0lDVCJ9fQ."
    "a--DCrz-EScpHgmAkWHNUGpDgH1vPRVJ77C5ZNluuG886oQqYOqPcsqYBNDNDGXpRKgMzxnFFIFoeSCQ7c1SBA"
)
#: A user token with a fixed jti, signed as-is by the account (jwt.encode: no stamping).
GOLDEN_USER_JWT = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ."
    "eyJqdGkiOiJmaXhlZC1qdGkiLCJpYXQiOjE3MDAwMDAwMDAsImlzcyI6IkFBVTJaT1hCSUc2TVY0RlNGWU5KSlUyTkJQRFRNSFNTTlVG"
    "NzRFV0lTNktMWkVaQ1NaVzVPSUNUIiwic3ViIjoiVUFTVUhPSlA2RUVWS0VLSE5MT0lHMk8zTlhPSkdOVEZVRU1YUlhOQklCSE9DQlRN"
    "VkZLWjNCV0giLCJuYW1lIjoiZ29sZGVuLXVzZXIiLCJuYXRzIjp7InR5cGUiOiJ1c2VyIiwidmVyc2lvbiI6Miwic3VicyI6LTEsImRh"
    "dGEiOi0xLCJwYXlsb2FkIjotMSwicHViIjp7ImFsbG93IjpbImEuYiJdfSwic3ViIjp7ImFsbG93IjpbIl9JTkJPWF94Lj4iXX19fQ."
    "YSRH-MUxpEXgNdiRWZZlXt7ZT6srQZThgPJfadh4QS5pCN1yWxEBaexvX3B6UR8T5ORYmT_7hIW4v6xVLaFrBg"
)


def pad(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def golden_keys() -> tuple[KeyPair, KeyPair, KeyPair]:
    return (KeyPair.from_seed(OPERATOR_SEED), KeyPair.from_seed(ACCOUNT_SEED), KeyPair.from_seed(USER_SEED))


# --- keys ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(KeyRole))
def test_generated_keys_have_the_role_letter_and_match_nkeys(role: KeyRole) -> None:
    key = KeyPair.generate(role)
    assert key.seed.startswith("S" + role.letter) and len(key.seed) == 58
    assert key.public_key.startswith(role.letter) and len(key.public_key) == 56
    # nkeys derives the same public key from the seed, and verifies our signatures.
    theirs = nkeys.from_seed(bytearray(key.seed.encode()))
    assert theirs.public_key.decode() == key.public_key
    assert theirs.verify(b"data", key.sign(b"data"))
    assert KeyPair.generate(role).public_key != key.public_key


def test_a_key_pair_never_shows_its_seed() -> None:
    key = KeyPair.generate(KeyRole.ACCOUNT)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert key.seed not in text and key.public_key in text


def test_public_keys_decode_to_the_raw_ed25519_key() -> None:
    operator, _, _ = golden_keys()
    role, raw = decode_public_key(operator.public_key)
    assert role is KeyRole.OPERATOR
    assert raw == bytes(nacl.signing.SigningKey(bytes(range(32))).verify_key)


def test_signatures_verify_only_for_the_signer_and_the_data() -> None:
    a, b = KeyPair.generate(KeyRole.USER), KeyPair.generate(KeyRole.USER)
    signature = a.sign(b"nonce")
    assert verify_signature(a.public_key, b"nonce", signature)
    assert not verify_signature(b.public_key, b"nonce", signature)
    assert not verify_signature(a.public_key, b"other", signature)
    assert not verify_signature(a.public_key, b"nonce", signature[:10])


def test_corrupt_or_misplaced_keys_are_refused_without_echoing_the_seed() -> None:
    operator, account, _ = golden_keys()
    flipped = operator.public_key[:10] + ("A" if operator.public_key[10] != "A" else "B") + operator.public_key[11:]
    with pytest.raises(InvalidKeyError, match="checksum"):
        decode_public_key(flipped)
    with pytest.raises(InvalidKeyError, match="role operator, expected account"):
        check_public_key(operator.public_key, KeyRole.ACCOUNT)
    with pytest.raises(InvalidKeyError, match="role account, expected user") as caught:
        KeyPair.from_seed(ACCOUNT_SEED, KeyRole.USER)
    assert ACCOUNT_SEED not in str(caught.value)
    bad_seed = ACCOUNT_SEED[:20] + ("A" if ACCOUNT_SEED[20] != "A" else "B") + ACCOUNT_SEED[21:]
    with pytest.raises(InvalidKeyError) as caught:
        KeyPair.from_seed(bad_seed)
    assert bad_seed not in str(caught.value)
    with pytest.raises(InvalidKeyError, match="does not belong"):
        KeyPair(public_key=operator.public_key, seed=account.seed, role=KeyRole.ACCOUNT)
    with pytest.raises(InvalidKeyError):
        KeyPair.from_seed("not a seed")


# --- JWT -------------------------------------------------------------------------------------------------------


def test_golden_operator_token_is_reproduced_exactly() -> None:
    operator, account, _ = golden_keys()
    token = jwt.issue(claims.operator_claims(operator.public_key, "golden", account.public_key), operator,
                      now=GOLDEN_IAT)
    assert token == GOLDEN_OPERATOR_JWT


def test_golden_user_token_is_reproduced_exactly() -> None:
    _, account, user = golden_keys()
    payload = {"jti": "fixed-jti", "iat": GOLDEN_IAT, "iss": account.public_key, "sub": user.public_key,
               "name": "golden-user",
               "nats": {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1,
                        "pub": {"allow": ["a.b"]}, "sub": {"allow": ["_INBOX_x.>"]}}}
    assert jwt.encode(payload, account) == GOLDEN_USER_JWT


def test_golden_token_parts_check_out_independently() -> None:
    """Re-derive the golden token's parts with base64/json/hashlib/PyNaCl only."""
    header_b64, payload_b64, sig_b64 = GOLDEN_OPERATOR_JWT.split(".")
    assert "=" not in GOLDEN_OPERATOR_JWT
    assert json.loads(base64.urlsafe_b64decode(pad(header_b64))) == {"typ": "JWT", "alg": "ed25519-nkey"}
    payload = json.loads(base64.urlsafe_b64decode(pad(payload_b64)))
    operator_public = nkeys.from_seed(bytearray(OPERATOR_SEED.encode())).public_key.decode()
    assert payload["iss"] == payload["sub"] == operator_public and payload["iat"] == GOLDEN_IAT
    assert payload["nats"] == {"type": "operator", "version": 2,
                               "system_account": KeyPair.from_seed(ACCOUNT_SEED).public_key}
    body = {k: v for k, v in payload.items() if k != "jti"}
    digest = hashlib.new("sha512_256", json.dumps(body, separators=(",", ":"), sort_keys=True).encode()).digest()
    assert payload["jti"] == base64.b32encode(digest).decode().rstrip("=")
    verify_key = nacl.signing.SigningKey(bytes(range(32))).verify_key
    verify_key.verify(f"{header_b64}.{payload_b64}".encode(), base64.urlsafe_b64decode(pad(sig_b64)))


def test_issue_stamps_a_distinct_jti_per_content_and_refuses_stamped_claims() -> None:
    operator, account, _ = golden_keys()
    first = jwt.decode(jwt.issue({"sub": account.public_key, "name": "a", "nats": {"v": 1}}, operator, now=5))
    other = jwt.decode(jwt.issue({"sub": account.public_key, "name": "a", "nats": {"v": 2}}, operator, now=5))
    later = jwt.decode(jwt.issue({"sub": account.public_key, "name": "a", "nats": {"v": 1}}, operator, now=6))
    assert len({first.claims["jti"], other.claims["jti"], later.claims["jti"]}) == 3
    assert first.issuer == operator.public_key and first.claims["iat"] == 5
    with pytest.raises(ValueError, match="stamps"):
        jwt.issue({"sub": "x", "iat": 1}, operator)


def test_verify_checks_signature_issuer_and_expiry() -> None:
    operator, account, user = golden_keys()
    token = jwt.issue({"sub": account.public_key, "name": "x", "nats": {"type": "account", "version": 2}},
                      operator)
    assert jwt.verify(token, {operator.public_key}).subject == account.public_key
    with pytest.raises(UntrustedIssuerError, match="not trusted"):
        jwt.verify(token, {KeyPair.generate(KeyRole.OPERATOR).public_key})
    head, body, sig = token.split(".")
    tampered_body = jwt.b64url(jwt.b64url_decode(body).replace(b'"name":"x"', b'"name":"y"'))
    with pytest.raises(JwtError, match="does not verify"):
        jwt.verify(f"{head}.{tampered_body}.{sig}")
    forged_issuer = jwt.encode({**jwt.decode(token).claims, "iss": user.public_key}, operator)
    with pytest.raises(JwtError, match="does not verify"):
        jwt.verify(forged_issuer)
    expired = jwt.issue({"sub": account.public_key, "exp": 100, "nats": {}}, operator, now=50)
    with pytest.raises(JwtError, match="expired"):
        jwt.verify(expired)
    assert jwt.verify(expired, now=99).claims["exp"] == 100


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.???.***", "e30.e30", "bnVsbA.bnVsbA.AA"])
def test_malformed_tokens_raise_jwt_error(token: str) -> None:
    with pytest.raises(JwtError):
        jwt.verify(token)


def test_errors_never_contain_the_token() -> None:
    operator, account, _ = golden_keys()
    token = jwt.issue({"sub": account.public_key, "nats": {}}, operator)
    for call in (lambda: jwt.verify(token, set()), lambda: jwt.verify(token + "x")):
        with pytest.raises(JwtError) as caught:
            call()
        assert token not in str(caught.value)

"""NATS JWTs, encoded by hand: ``b64url(header) . b64url(claims) . b64url(ed25519 signature)``.

* The header is fixed: ``{"typ":"JWT","alg":"ed25519-nkey"}`` (the server refuses a header without ``typ``).
* base64url without ``=`` padding; the signature is the issuer seed's Ed25519 signature of the ASCII
  ``<b64 header>.<b64 claims>``.
* :func:`issue` stamps ``iss`` (the signer), ``iat`` (now) and a ``jti`` that is a hash of everything else, so
  two different tokens never share a jti (servers syncing JWTs drop an incoming one with the jti they hold).
  The server does not check the jti itself; Go hashes only the standard claims, we hash the whole payload.

Pure: no I/O, and deterministic for a fixed ``now`` (ed25519 signatures are deterministic), which is what the
golden test vector in ``tests/natsauth`` pins down. Tokens are credentials: none is ever put into a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .errors import InvalidKeyError, JwtError, UntrustedIssuerError
from .keys import KeyPair, verify_signature

HEADER: Final = {"typ": "JWT", "alg": "ed25519-nkey"}
#: ``ed25519`` is the v1 value; the server still accepts it, so we accept it when verifying.
ACCEPTED_ALGORITHMS: Final = frozenset({"ed25519-nkey", "ed25519"})
#: Claims that :func:`issue` sets itself.
STAMPED_CLAIMS: Final = frozenset({"jti", "iat", "iss"})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact_json(value: Mapping[str, Any], *, sort_keys: bool = False) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode()


_HEADER_B64: Final = b64url(_compact_json(HEADER))


def encode(payload: Mapping[str, Any], signer: KeyPair) -> str:
    """Sign exactly ``payload`` (no stamping) with ``signer``'s seed."""
    signing_input = f"{_HEADER_B64}.{b64url(_compact_json(payload))}"
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode('ascii')))}"


def compute_jti(payload: Mapping[str, Any]) -> str:
    """base32 (no padding) of SHA-512/256 over the canonical JSON of the payload without its ``jti``:
    the same algorithm as Go's nats-io/jwt, applied to every claim instead of the standard ones only."""
    body = {k: v for k, v in payload.items() if k != "jti"}
    digest = hashlib.new("sha512_256", _compact_json(body, sort_keys=True)).digest()
    return base64.b32encode(digest).rstrip(b"=").decode("ascii")


def issue(claims: Mapping[str, Any], signer: KeyPair, *, now: int | None = None) -> str:
    """Stamp ``jti``, ``iat`` (``now``, default the current time) and ``iss`` (the signer) onto ``claims``
    and sign. ``claims`` carries ``sub``, ``name``, ``nats`` (and optionally ``exp``)."""
    if stamped := STAMPED_CLAIMS & claims.keys():
        raise ValueError(f"claims must not set {sorted(stamped)}: issue() stamps them")
    payload: dict[str, Any] = {"iat": int(time.time()) if now is None else now, "iss": signer.public_key, **claims}
    return encode({"jti": compute_jti(payload), **payload}, signer)


@dataclass(frozen=True)
class DecodedJwt:
    """A token split into its parts. Claims are public data; the signature is left out of ``repr``."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    @property
    def issuer(self) -> str:
        return str(self.claims.get("iss", ""))

    @property
    def subject(self) -> str:
        return str(self.claims.get("sub", ""))

    @property
    def nats(self) -> dict[str, Any]:
        section = self.claims.get("nats")
        return section if isinstance(section, dict) else {}

    @property
    def claim_type(self) -> str:
        """``operator``, ``account`` or ``user`` (empty if absent)."""
        return str(self.nats.get("type", ""))


def decode(token: str) -> DecodedJwt:
    """Split and parse a token without verifying it; raises :class:`JwtError` if it is malformed."""
    if not isinstance(token, str):
        raise JwtError(f"a JWT is a string, not {type(token).__name__}")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError(f"a JWT has 3 dot-separated parts, this one has {len(parts)}")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise JwtError("JWT parts are not base64url-encoded JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("JWT header and claims must be JSON objects")
    return DecodedJwt(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def verify(token: str, trusted_issuers: Iterable[str] | None = None, *, now: float | None = None) -> DecodedJwt:
    """Decode ``token`` and check its header, its signature against its ``iss`` key, that ``iss`` is one of
    ``trusted_issuers`` (if given) and that it has not expired. Raises :class:`JwtError` (or
    :class:`UntrustedIssuerError`) saying which check failed."""
    decoded = decode(token)
    if decoded.header.get("typ") != "JWT" or decoded.header.get("alg") not in ACCEPTED_ALGORITHMS:
        raise JwtError(f"unsupported JWT header typ={decoded.header.get('typ')!r} alg={decoded.header.get('alg')!r}")
    issuer = decoded.issuer
    try:
        valid = verify_signature(issuer, decoded.signing_input, decoded.signature)
    except InvalidKeyError as exc:
        raise JwtError(f"JWT issuer is not a valid public nkey: {exc}") from None
    if not valid:
        raise JwtError(f"JWT signature does not verify against its issuer {issuer}")
    if trusted_issuers is not None:
        trusted = set(trusted_issuers)
        if issuer not in trusted:
            raise UntrustedIssuerError(
                f"JWT for {decoded.subject or '?'} is signed by {issuer}, which is not trusted "
                f"(trusted: {', '.join(sorted(trusted)) or 'none'})")
    expires = decoded.claims.get("exp")
    if isinstance(expires, int | float) and expires and expires <= (time.time() if now is None else now):
        raise JwtError(f"JWT for {decoded.subject or '?'} expired at {int(expires)}")
    return decoded

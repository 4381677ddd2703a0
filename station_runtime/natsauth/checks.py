"""Pure checks around the account push: is an account JWT fit to push, what did the resolver answer, and does a
stored JWT already say what we want.

The resolver's ``$SYS.REQ.CLAIMS.UPDATE`` only decodes a JWT: it answers 200 and stores an account signed by a
foreign operator, a self-signed one, an expired one, or one whose limits make it unusable, and the account then
fails (at once, or after the next restart when it overwrote a good one). So :func:`check_account_jwt` refuses
all of these before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from . import jwt
from .errors import InvalidKeyError, JwtError, PushRejectedError
from .keys import KeyRole, check_public_key

#: Account limits that must be -1 or positive, or the account is accepted and then unusable.
REQUIRED_ACCOUNT_LIMITS: Final = ("conn", "subs", "payload")
#: Claims that change with every signing and say nothing about the account.
_VOLATILE_CLAIMS: Final = frozenset({"jti", "iat"})


def check_account_jwt(token: str, trusted_issuers: Iterable[str], *, now: float | None = None) -> jwt.DecodedJwt:
    """Decode ``token`` and check that it is a v2 account JWT for an ``A…`` key, signed (verifiably) by one of
    ``trusted_issuers``, not expired, with usable limits. Raises :class:`JwtError` (or
    :class:`~.errors.UntrustedIssuerError`) naming the failed check; never returns an unfit token."""
    decoded = jwt.verify(token, trusted_issuers, now=now)
    nats = decoded.nats
    if decoded.claim_type != "account":
        raise JwtError(f"JWT for {decoded.subject or '?'} is a {decoded.claim_type or 'typeless'} JWT, "
                       "not an account JWT")
    if nats.get("version") != 2:
        raise JwtError(f"account JWT for {decoded.subject} has nats.version {nats.get('version')!r}, expected 2")
    try:
        check_public_key(decoded.subject, KeyRole.ACCOUNT)
    except InvalidKeyError as exc:
        raise JwtError(f"account JWT subject is not an account key: {exc}") from None
    if decoded.issuer == decoded.subject:
        raise JwtError(f"account JWT for {decoded.subject} is self-signed")
    limits = nats.get("limits")
    limits = limits if isinstance(limits, dict) else {}
    for name in REQUIRED_ACCOUNT_LIMITS:
        value = limits.get(name, 0)
        if not isinstance(value, int) or (value != -1 and value <= 0):
            raise JwtError(f"account JWT for {decoded.subject} has limit {name}={value!r}: connections would be "
                           "refused or dropped (use -1 for unlimited)")
    return decoded


@dataclass(frozen=True)
class UpdateReply:
    """A resolver's success answer to a claims update."""

    account: str
    code: int
    message: str
    server: str


def parse_update_reply(data: bytes, account: str) -> UpdateReply:
    """Parse the reply to ``$SYS.REQ.CLAIMS.UPDATE``: ``{"server": {...}, "data": {"account", "code": 200,
    "message"}}`` on success, ``{"server": {...}, "error": {"account", "code", "description"}}`` on failure
    (raised as :class:`PushRejectedError` with the server's description)."""
    try:
        reply = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise PushRejectedError(account, 0, f"unreadable reply from the resolver ({len(data)} bytes)") from None
    if not isinstance(reply, dict):
        raise PushRejectedError(account, 0, "unexpected reply from the resolver: not a JSON object")
    server = reply.get("server")
    server_name = str(server.get("name", "")) if isinstance(server, dict) else ""
    error = reply.get("error")
    if isinstance(error, dict):
        raise PushRejectedError(str(error.get("account") or account), _int(error.get("code")),
                                str(error.get("description") or "no description"))
    body = reply.get("data")
    if not isinstance(body, dict):
        raise PushRejectedError(account, 0, "unexpected reply from the resolver: neither data nor error")
    code = _int(body.get("code"))
    if code != 200:
        raise PushRejectedError(str(body.get("account") or account), code,
                                str(body.get("message") or body.get("description") or "no description"))
    return UpdateReply(account=str(body.get("account") or account), code=code,
                       message=str(body.get("message", "")), server=server_name)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def same_claims(a: jwt.DecodedJwt, b: jwt.DecodedJwt) -> bool:
    """Whether two tokens say the same thing (same issuer, subject, name, limits, revocations...), ignoring
    the ``jti`` and ``iat`` that differ with every signing: re-pushing would change nothing."""
    return _stable(a.claims) == _stable(b.claims)


def _stable(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k not in _VOLATILE_CLAIMS}

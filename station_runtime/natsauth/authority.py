"""The operator's signing authority: its keys, and everything it signs (operator, system account and org account
JWTs, user credentials), without any I/O. :mod:`.provision` pushes what this module signs.

The chain::

    operator (O…)                      self-signed operator JWT, trusted by the server's config
     ├── system account (A…, "SYS")     preloaded into the server; its user pushes the org accounts
     └── account per org (A…)           name = org id; JetStream limits; signed by the operator
          ├── user per station (U…)     station_permissions(org, station id)
          └── user per admin (U…)       org_admin_permissions(org): operator, controller, CLI

Keys are plain strings so that they serialise to Kubernetes Secrets (``to_secret_data``/``from_secret_data``).
User keys are made fresh for every set of credentials and leave only inside the ``.creds`` text.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..contract.ids import validate_id
from . import claims, jwt, server
from .claims import AccountLimits, Permissions
from .errors import InvalidKeyError
from .keys import KeyPair, KeyRole

DEFAULT_OPERATOR_NAME: Final = "lattice"
SYSTEM_ACCOUNT_NAME: Final = "SYS"


def _key_from_data(data: Mapping[str, str], prefix: str, role: KeyRole) -> KeyPair:
    try:
        seed = data[f"{prefix}-seed"]
    except KeyError:
        raise InvalidKeyError(f"secret data has no {prefix}-seed") from None
    key = KeyPair.from_seed(seed, role)
    expected = data.get(f"{prefix}-public-key")
    if expected is not None and expected != key.public_key:
        raise InvalidKeyError(f"{prefix}-seed does not belong to {prefix}-public-key {expected}")
    return key


def _key_to_data(prefix: str, key: KeyPair) -> dict[str, str]:
    return {f"{prefix}-seed": key.seed, f"{prefix}-public-key": key.public_key}


@dataclass(frozen=True)
class OperatorKeys:
    """The operator identity, the system account, and optionally an operator signing key (when present it signs
    the org accounts instead of the identity key, and is listed in the operator JWT)."""

    operator: KeyPair
    system_account: KeyPair
    signing_key: KeyPair | None = None
    name: str = DEFAULT_OPERATOR_NAME
    #: ``iat`` of the operator and system account JWTs (unix seconds). Fixed when the keys are made, so that the
    #: server config rendered from the same keys is the same text on every operator start (no needless reload).
    issued_at: int | None = None

    def __post_init__(self) -> None:
        for key, role in ((self.operator, KeyRole.OPERATOR), (self.system_account, KeyRole.ACCOUNT),
                          (self.signing_key, KeyRole.OPERATOR)):
            if key is not None and key.role is not role:
                raise InvalidKeyError(f"key {key.public_key} has role {key.role.name.lower()}, "
                                      f"expected {role.name.lower()}")

    @classmethod
    def generate(cls, name: str = DEFAULT_OPERATOR_NAME, *, with_signing_key: bool = False) -> OperatorKeys:
        return cls(operator=KeyPair.generate(KeyRole.OPERATOR), system_account=KeyPair.generate(KeyRole.ACCOUNT),
                   signing_key=KeyPair.generate(KeyRole.OPERATOR) if with_signing_key else None, name=name,
                   issued_at=int(time.time()))

    def to_secret_data(self) -> dict[str, str]:
        """String data for a Kubernetes Secret: seeds (secret) and public keys (for humans and consistency)."""
        data = {"operator-name": self.name, **_key_to_data("operator", self.operator),
                **_key_to_data("system-account", self.system_account)}
        if self.signing_key is not None:
            data.update(_key_to_data("operator-signing-key", self.signing_key))
        if self.issued_at is not None:
            data["issued-at"] = str(self.issued_at)
        return data

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> OperatorKeys:
        signing = (_key_from_data(data, "operator-signing-key", KeyRole.OPERATOR)
                   if "operator-signing-key-seed" in data else None)
        issued_at = data.get("issued-at")
        if issued_at is not None and not issued_at.isdigit():
            raise ValueError("secret data issued-at must be unix seconds")
        return cls(operator=_key_from_data(data, "operator", KeyRole.OPERATOR),
                   system_account=_key_from_data(data, "system-account", KeyRole.ACCOUNT),
                   signing_key=signing, name=data.get("operator-name", DEFAULT_OPERATOR_NAME),
                   issued_at=int(issued_at) if issued_at is not None else None)


@dataclass(frozen=True)
class OrgAccount:
    """An org's NATS account: its identity key and its current account JWT."""

    org: str
    key: KeyPair
    jwt: str = field(repr=False)

    @property
    def public_key(self) -> str:
        return self.key.public_key

    def to_secret_data(self) -> dict[str, str]:
        return {"org": self.org, **_key_to_data("account", self.key), "account-jwt": self.jwt}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> OrgAccount:
        try:
            org, token = data["org"], data["account-jwt"]
        except KeyError as exc:
            raise InvalidKeyError(f"secret data has no {exc.args[0]}") from None
        return cls(org=validate_id(org, "org id"), key=_key_from_data(data, "account", KeyRole.ACCOUNT), jwt=token)


class OrgAuthority:
    """Signs for one operator. The operator and system account JWTs are made once, at construction, with
    ``iat = keys.issued_at`` (or ``now``); org accounts and users get the current time.

    Users are signed by their account's identity key, so the operator JWT never asks for strict signing-key
    usage (under it the server accepts only users signed by account signing keys)."""

    def __init__(self, keys: OperatorKeys, *, now: int | None = None) -> None:
        self.keys = keys
        now = keys.issued_at if now is None else now
        signing_keys = [keys.signing_key.public_key] if keys.signing_key else []
        self.operator_jwt = jwt.issue(claims.operator_claims(
            keys.operator.public_key, keys.name, keys.system_account.public_key, signing_keys=signing_keys),
            keys.operator, now=now)
        self.system_account_jwt = jwt.issue(claims.account_claims(
            keys.system_account.public_key, SYSTEM_ACCOUNT_NAME, jetstream=False), self._account_signer, now=now)

    def __repr__(self) -> str:
        return f"OrgAuthority(operator={self.keys.operator.public_key}, name={self.keys.name!r})"

    @property
    def _account_signer(self) -> KeyPair:
        return self.keys.signing_key or self.keys.operator

    @property
    def trusted_issuers(self) -> frozenset[str]:
        """Keys whose signature on an account JWT this operator's servers accept."""
        keys = {self.keys.operator.public_key}
        if self.keys.signing_key is not None:
            keys.add(self.keys.signing_key.public_key)
        return frozenset(keys)

    def server_config(self, resolver_dir: str | Path, *, interval: str = "2m") -> str:
        """The operator-mode block of the server config (see :mod:`.server`)."""
        return server.operator_mode_config(self.operator_jwt, self.keys.system_account.public_key,
                                           self.system_account_jwt, resolver_dir, interval=interval)

    # --- accounts --------------------------------------------------------------------------------------------

    def org_account(self, org: str, limits: AccountLimits | None = None, *, account_key: KeyPair | None = None,
                    revocations: Mapping[str, int] | None = None, now: int | None = None) -> OrgAccount:
        """The org's account signed with the current limits and revocations. Pass the stored ``account_key``
        to keep the org's identity; without it a new key is made (a new, empty account)."""
        org = validate_id(org, "org id")
        key = account_key or KeyPair.generate(KeyRole.ACCOUNT)
        if key.role is not KeyRole.ACCOUNT:
            raise InvalidKeyError(f"key {key.public_key} is not an account key")
        token = jwt.issue(claims.account_claims(key.public_key, org, limits, revocations=revocations),
                          self._account_signer, now=now)
        return OrgAccount(org=org, key=key, jwt=token)

    # --- users -----------------------------------------------------------------------------------------------

    def issue_user_creds(self, account: OrgAccount, name: str, permissions: Permissions, *,
                         expires_at: int | None = None, now: int | None = None) -> str:
        """``.creds`` text for a new user of ``account`` (a fresh user key, signed by the account key)."""
        user = KeyPair.generate(KeyRole.USER)
        token = jwt.issue(claims.user_claims(user.public_key, name, permissions, expires_at=expires_at),
                          account.key, now=now)
        return claims.creds(token, user.seed)

    def issue_station_creds(self, account: OrgAccount, station_id: str, *, expires_at: int | None = None) -> str:
        """Least-privilege creds for one station; it must connect with ``station_inbox_prefix(station_id)``."""
        return self.issue_user_creds(account, f"station-{validate_id(station_id, 'station id')}",
                                     claims.station_permissions(account.org, station_id), expires_at=expires_at)

    def issue_admin_creds(self, account: OrgAccount, *, name: str = "admin",
                          expires_at: int | None = None) -> str:
        """Creds for the org's controller: everything in the org (see ``org_admin_permissions``)."""
        return self.issue_user_creds(account, f"{name}-{account.org}", claims.org_admin_permissions(account.org),
                                     expires_at=expires_at)

    def system_user_creds(self, *, permissions: Permissions | None = None, name: str = "lattice-operator",
                          expires_at: int | None = None, now: int | None = None) -> str:
        """Creds for a user of the system account, by default allowed only to manage account JWTs."""
        user = KeyPair.generate(KeyRole.USER)
        token = jwt.issue(claims.user_claims(user.public_key, name,
                                             permissions or claims.system_user_permissions(),
                                             expires_at=expires_at), self.keys.system_account, now=now)
        return claims.creds(token, user.seed)


def user_public_key(creds_text: str) -> str:
    """The user public key (``U…``) a ``.creds`` text authenticates as: what a revocation names."""
    return jwt.decode(claims.parse_creds(creds_text).jwt).subject

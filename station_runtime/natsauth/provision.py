"""Provisioning over NATS: pushing org accounts to the account resolver as a system-account user, and creating
an org's JetStream state as its admin so that stations never need the right to create streams.

* :class:`AccountProvisioner` checks an account JWT (signed by our operator, a usable account: see
  :mod:`.checks`) *before* pushing it on ``$SYS.REQ.CLAIMS.UPDATE``, turns the resolver's error into
  :class:`PushRejectedError` with the server's description, and confirms by reading the JWT back with
  ``$SYS.REQ.ACCOUNT.<A>.CLAIMS.LOOKUP``. Pushing the same claims again is harmless (last writer wins).
* :class:`Tenancy` is what the operator calls: ``ensure_org`` (idempotent: no push when the stored account
  already says the same; revocations are carried forward) and the credential issuers of :class:`OrgAuthority`.
* :func:`prepare_org_state` creates the org's buckets, events stream and results object store.

Nothing here logs or raises a seed or a token; only public keys, org ids and server descriptions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import RawCredentials

from ..contract import subjects
from ..natsio.connect import server_list
from ..natsio.state import OrgState, StateLimits
from . import jwt
from .authority import OrgAccount, OrgAuthority
from .checks import UpdateReply, check_account_jwt, parse_update_reply, same_claims
from .claims import AccountLimits, Permissions
from .errors import JwtError, ProvisioningError, ResolverUnavailableError
from .keys import KeyPair, KeyRole, check_public_key

log = logging.getLogger(__name__)


def claims_lookup_subject(account: str) -> str:
    return subjects.sys_account_claims(check_public_key(account, KeyRole.ACCOUNT), "LOOKUP")


class AccountProvisioner:
    """Pushes account JWTs through ``nc``, a connection of a system-account user. Only JWTs signed by one of
    ``trusted_issuers`` (the operator key and its signing keys) are pushed."""

    def __init__(self, nc: NatsClient, trusted_issuers: Iterable[str], *, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.trusted_issuers = frozenset(check_public_key(k, KeyRole.OPERATOR) for k in trusted_issuers)
        if not self.trusted_issuers:
            raise ValueError("an account provisioner needs at least one trusted operator key")
        self.timeout_s = timeout_s
        self.pushes = 0

    async def push(self, account_jwt: str) -> UpdateReply:
        """Check, push and confirm ``account_jwt``. Raises :class:`JwtError` (not pushed),
        :class:`PushRejectedError` (the resolver refused it), :class:`ResolverUnavailableError`, or
        :class:`ProvisioningError` when the resolver does not hold the JWT afterwards."""
        account = check_account_jwt(account_jwt, self.trusted_issuers).subject
        reply = parse_update_reply(await self._request(subjects.SYS_CLAIMS_UPDATE, account_jwt.encode()), account)
        self.pushes += 1
        if reply.account != account:
            raise ProvisioningError(f"resolver confirmed account {reply.account}, but {account} was pushed")
        stored = await self.lookup(account)
        if stored != account_jwt:
            # Another writer pushed in between, or the resolver dropped ours: the caller re-reads and decides.
            raise ProvisioningError(f"account {account}: the resolver does not hold the JWT just pushed "
                                    f"({'nothing stored' if stored is None else 'another JWT is stored'})")
        log.info("account %s pushed and confirmed (server %s)", account, reply.server or "?")
        return reply

    async def lookup(self, account: str) -> str | None:
        """The account JWT the resolver holds, or None if it holds none."""
        data = await self._request(claims_lookup_subject(account), b"")
        token = data.decode(errors="replace").strip()
        return token or None

    async def list_accounts(self) -> list[str]:
        """Public keys of every account the resolver holds."""
        data = await self._request(subjects.SYS_CLAIMS_LIST, b"")
        try:
            accounts = json.loads(data)["data"]
        except (ValueError, KeyError, TypeError):
            raise ProvisioningError("unreadable reply to the claims list request") from None
        return sorted(str(a) for a in accounts)

    async def _request(self, subject: str, payload: bytes) -> bytes:
        try:
            msg = await self.nc.request(subject, payload, timeout=self.timeout_s)
        except nats.errors.NoRespondersError:
            raise ResolverUnavailableError(
                f"no account resolver answers on {subject}: connect as a system-account user to a server in "
                "operator mode with a full resolver") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise ResolverUnavailableError(
                f"no answer on {subject} within {self.timeout_s:g}s (is this user allowed to publish there?)"
            ) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
            raise ResolverUnavailableError(f"NATS connection unavailable: {type(exc).__name__}") from None
        data: bytes = msg.data
        return data


class Tenancy:
    """One operator's tenancy on one NATS deployment: org accounts in, credentials out.

    ``async with await Tenancy.connect(url, authority) as tenancy: org = await tenancy.ensure_org("acme")``
    """

    def __init__(self, authority: OrgAuthority, provisioner: AccountProvisioner, *,
                 owns_connection: bool = False) -> None:
        self.authority = authority
        self.provisioner = provisioner
        self._owns_connection = owns_connection

    @classmethod
    async def connect(cls, url: str, authority: OrgAuthority, *, timeout_s: float = 2.0,
                      name: str = "lattice-operator-sys", max_reconnect_attempts: int = -1) -> Tenancy:
        """Connect as a system-account user (fresh creds held in memory only) and return a tenancy that
        closes the connection on :meth:`close`."""
        nc = NatsClient()
        options: dict[str, Any] = {
            "servers": server_list(url), "name": name,
            "user_credentials": RawCredentials(authority.system_user_creds()),
            "connect_timeout": timeout_s, "allow_reconnect": True, "reconnect_time_wait": 0.5,
            "max_reconnect_attempts": max_reconnect_attempts,
        }
        await nc.connect(**options)
        provisioner = AccountProvisioner(nc, authority.trusted_issuers, timeout_s=timeout_s)
        return cls(authority, provisioner, owns_connection=True)

    async def close(self) -> None:
        if self._owns_connection:
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await self.provisioner.nc.drain()

    async def __aenter__(self) -> Tenancy:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def ensure_org(self, org: str, limits: AccountLimits | None = None, *,
                         account_key: KeyPair | None = None, revoke: Iterable[str] = (),
                         now: int | None = None) -> OrgAccount:
        """Make the resolver hold ``org``'s account with ``limits``; return it (key + JWT) for the caller to
        store. Pass the stored ``account_key`` on every later call: without it a new account is made.

        Idempotent: when the resolver already holds a JWT of ours with the same claims, nothing is pushed.
        Revocations in the stored JWT are kept; ``revoke`` adds user public keys (``"*"``: every user issued
        so far) revoked as of ``now``.
        """
        key = account_key or KeyPair.generate(KeyRole.ACCOUNT)
        stamp = int(time.time()) if now is None else now
        stored = await self._stored(key.public_key)
        revocations: dict[str, int] = dict(stored.decoded.nats.get("revocations") or {}) if stored else {}
        revocations.update({user: stamp for user in revoke})
        desired = self.authority.org_account(org, limits, account_key=key, revocations=revocations, now=now)
        if stored is not None and same_claims(stored.decoded, jwt.decode(desired.jwt)):
            return OrgAccount(org=desired.org, key=key, jwt=stored.token)
        await self.provisioner.push(desired.jwt)
        log.info("org %s: account %s %s", desired.org, key.public_key, "updated" if stored else "created")
        return desired

    async def _stored(self, account: str) -> _StoredAccount | None:
        token = await self.provisioner.lookup(account)
        if token is None:
            return None
        try:
            decoded = check_account_jwt(token, self.provisioner.trusted_issuers)
        except JwtError as exc:
            log.warning("the resolver holds an account JWT for %s that is not ours (%s); replacing it", account, exc)
            return None
        return _StoredAccount(decoded, token)

    # --- credentials (pure, delegated) ------------------------------------------------------------------------

    def issue_station_creds(self, account: OrgAccount, station_id: str, *, expires_at: int | None = None) -> str:
        return self.authority.issue_station_creds(account, station_id, expires_at=expires_at)

    def issue_admin_creds(self, account: OrgAccount, *, expires_at: int | None = None) -> str:
        return self.authority.issue_admin_creds(account, expires_at=expires_at)

    def system_user_creds(self, *, permissions: Permissions | None = None) -> str:
        return self.authority.system_user_creds(permissions=permissions)


@dataclass(frozen=True)
class _StoredAccount:
    decoded: jwt.DecodedJwt
    token: str = field(repr=False)


async def prepare_org_state(nc: NatsClient, org: str, limits: StateLimits | None = None) -> OrgState:
    """Create (if missing) the org's KV buckets, events stream and results object store, as the org admin.
    Run it before the org's stations start: station users may not create streams (see ``station_permissions``)."""
    state = await OrgState.open(nc, org, limits, create=True)
    await state.results()
    return state

"""JWT mode: one NATS account per org, one least-privilege user per station id.

Keys live in Kubernetes Secrets in the operator's namespace: ``lattice-nats-operator`` (operator and system
account keys, made once by ``lattice auth bootstrap`` — the Helm chart's pre-install hook runs it) and one
``lattice-org-<org>`` per org (the org's account key and JWT, made here on the first resource of the org).
Admin creds (the operator's own user in each org) are issued in memory for each start; station creds are issued
once per station id and kept in the Station's creds Secret, so reconciles do not churn them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

from station_runtime.natsauth import AccountLimits, OperatorKeys, OrgAccount, OrgAuthority, Tenancy
from station_runtime.natsio.connect import NatsSettings

from . import kube
from .config import OperatorSettings
from .credplan import plan_station_creds

log = logging.getLogger(__name__)

OPERATOR_SECRET = "lattice-nats-operator"
RESOLVER_CONFIGMAP = "lattice-nats-resolver"


def org_secret_name(org: str) -> str:
    return f"lattice-org-{org.lower().replace('_', '-')}"


class JwtAuth:
    def __init__(self, settings: OperatorSettings, authority: OrgAuthority, tenancy: Tenancy) -> None:
        self.settings = settings
        self.authority = authority
        self.tenancy = tenancy
        self._accounts: dict[str, OrgAccount] = {}
        #: Each org's limits, as its namespace last said (unlimited until it says otherwise).
        self._limits: dict[str, AccountLimits] = {}
        self._lock = asyncio.Lock()
        self._creds_dir = Path(tempfile.mkdtemp(prefix="lattice-operator-creds-"))  # mode 0700

    @classmethod
    async def load(cls, settings: OperatorSettings) -> JwtAuth:
        data = await kube.read_secret(settings.namespace, OPERATOR_SECRET)
        if data is None:
            raise RuntimeError(f"JWT mode needs the Secret {settings.namespace}/{OPERATOR_SECRET}: run "
                               f"`lattice auth bootstrap --namespace {settings.namespace}` (the Helm chart's hook "
                               "does) and configure NATS with the resolver it writes")
        authority = OrgAuthority(OperatorKeys.from_secret_data(data))
        tenancy = await Tenancy.connect(settings.nats.url, authority)
        log.info("JWT mode: operator %s", authority.keys.operator.public_key)
        return cls(settings, authority, tenancy)

    async def account(self, org: str) -> OrgAccount:
        async with self._lock:
            if org in self._accounts:
                return self._accounts[org]
            name = org_secret_name(org)
            stored = await kube.read_secret(self.settings.namespace, name)
            key = OrgAccount.from_secret_data(stored).key if stored else None
            account = await self.tenancy.ensure_org(org, self._limits.get(org, AccountLimits()), account_key=key)
            if stored is None or stored.get("account-jwt") != account.jwt:
                await kube.patch_secret_keys(self.settings.namespace, name, dict(account.to_secret_data()),
                                             labels={"app.kubernetes.io/managed-by": "station-lattice-operator",
                                                     "lattice.station.dev/org": org})
            self._accounts[org] = account
            return account

    async def limit(self, org: str, limits: AccountLimits) -> None:
        """Push the org's account again when its limits changed (the server applies them at once)."""
        async with self._lock:
            if self._limits.get(org, AccountLimits()) == limits and org in self._accounts:
                return
            self._limits[org] = limits
            self._accounts.pop(org, None)  # the next account() signs and pushes it with the new limits
        account = await self.account(org)
        log.info("org %s: NATS account %s limits %s", org, account.public_key, limits)

    async def admin_settings(self, org: str) -> NatsSettings:
        account = await self.account(org)
        path = self._creds_dir / f"{org}.creds"
        path.write_text(self.authority.issue_admin_creds(account))
        path.chmod(0o600)
        return dataclasses.replace(self.settings.nats, creds_file=path)

    async def station_creds(self, org: str, station_ids: list[str],
                            existing: dict[str, str] | None = None) -> dict[str, str] | None:
        """The creds Secret's data for these station ids: kept, renewed when close to their end, issued for new
        replicas; the users of removed replicas are revoked in the account JWT (the server refuses them at once)."""
        now = time.time()
        ttl = self.settings.station_creds_ttl_s
        plan = plan_station_creds(existing or {}, station_ids, now=now, lifetime_s=ttl)
        if plan.revoke:
            current = await self.account(org)
            await self.tenancy.ensure_org(org, self._limits.get(org, AccountLimits()), account_key=current.key,
                                          revoke=plan.revoke)
            async with self._lock:
                self._accounts.pop(org, None)  # read again (and its Secret updated) with the revocations
            log.info("org %s: revoked %d station user(s) of removed replicas", org, len(plan.revoke))
        account = await self.account(org)
        creds = dict(plan.keep)
        for station_id in plan.issue:
            creds[f"{station_id}.creds"] = self.authority.issue_station_creds(account, station_id,
                                                                              expires_at=int(now + ttl))
        return creds

    async def close(self) -> None:
        await self.tenancy.close()


async def bootstrap(namespace: str, *, resolver_dir: str = "/data/jwt") -> tuple[bool, str]:
    """Create the operator keys Secret and the NATS resolver ConfigMap if absent. Idempotent: an existing
    Secret is kept (new keys would orphan every account), and the ConfigMap is rewritten from it."""
    data = await kube.read_secret(namespace, OPERATOR_SECRET)
    created = data is None
    keys = OperatorKeys.generate() if data is None else OperatorKeys.from_secret_data(data)
    if created:
        await kube.patch_secret_keys(namespace, OPERATOR_SECRET, dict(keys.to_secret_data()),
                                     labels={"app.kubernetes.io/managed-by": "station-lattice"})
    authority = OrgAuthority(keys)
    await kube.apply_config_map(namespace, RESOLVER_CONFIGMAP, {"resolver.conf": authority.server_config(resolver_dir)})
    return created, keys.operator.public_key

"""NATS decentralized auth for the lattice: one NATS account per org, one least-privilege user per station.

Pure modules: :mod:`.keys` (nkeys), :mod:`.jwt` (encode/decode/verify), :mod:`.claims` (claims and the permission
sets), :mod:`.server` (server config), :mod:`.authority` (what the operator signs), :mod:`.checks`.
I/O: :mod:`.provision` (pushing accounts, creating an org's JetStream state). See ``docs/nats-auth.md``.
"""

from __future__ import annotations

from ..contract.subjects import results_bucket, station_inbox_prefix
from .authority import OperatorKeys, OrgAccount, OrgAuthority, user_public_key
from .checks import UpdateReply, check_account_jwt, parse_update_reply
from .claims import (
    AccountLimits,
    Credentials,
    Permissions,
    ResponsePermission,
    creds,
    org_admin_permissions,
    parse_creds,
    station_permissions,
    system_user_permissions,
)
from .errors import (
    InvalidKeyError,
    JwtError,
    NatsAuthError,
    ProvisioningError,
    PushRejectedError,
    ResolverUnavailableError,
    UntrustedIssuerError,
)
from .keys import KeyPair, KeyRole
from .provision import AccountProvisioner, Tenancy, prepare_org_state

__all__ = [
    "AccountLimits",
    "AccountProvisioner",
    "Credentials",
    "InvalidKeyError",
    "JwtError",
    "KeyPair",
    "KeyRole",
    "NatsAuthError",
    "OperatorKeys",
    "OrgAccount",
    "OrgAuthority",
    "Permissions",
    "ProvisioningError",
    "PushRejectedError",
    "ResolverUnavailableError",
    "ResponsePermission",
    "Tenancy",
    "UntrustedIssuerError",
    "UpdateReply",
    "check_account_jwt",
    "creds",
    "org_admin_permissions",
    "parse_creds",
    "parse_update_reply",
    "prepare_org_state",
    "results_bucket",
    "station_inbox_prefix",
    "station_permissions",
    "system_user_permissions",
    "user_public_key",
]

"""The nats-server configuration for operator mode with a full account resolver, as text.

Pure. The whole block goes into ``EmbeddedNats(extra_config=...)`` (tests, ``lattice up``); each piece is also
available alone, for a Helm chart that puts them into its own ``merge`` values::

    operator: "<operator JWT>"
    system_account: "<A… system account public key>"
    resolver: {type: full, dir: "<dir>", allow_delete: false, interval: "2m"}
    resolver_preload: {<A… system account>: "<system account JWT>"}

``full``: every server keeps every account JWT in ``dir`` and they sync over the system account; accounts are
pushed at runtime with ``$SYS.REQ.CLAIMS.UPDATE`` (see :mod:`.provision`). ``allow_delete: false``: an account
is retired by revoking its users, never by deleting its JWT. The system account is preloaded so that the
operator's system user can connect to a fresh server before anything has been pushed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .keys import KeyRole, check_public_key


def _quote(value: str) -> str:
    # NATS config strings take JSON-style double quotes and escapes.
    return json.dumps(value)


def operator_line(operator_jwt: str) -> str:
    """The server trusts this operator (an inline JWT; the server also accepts a file path here)."""
    return f"operator: {_quote(operator_jwt)}"


def system_account_line(system_account: str) -> str:
    return f"system_account: {_quote(check_public_key(system_account, KeyRole.ACCOUNT))}"


def resolver_block(resolver_dir: str | Path, *, interval: str = "2m", allow_delete: bool = False) -> str:
    return (f"resolver: {{type: full, dir: {_quote(str(resolver_dir))}, "
            f"allow_delete: {'true' if allow_delete else 'false'}, interval: {_quote(interval)}}}")


def resolver_preload_block(accounts: Mapping[str, str]) -> str:
    """``{account public key: account JWT}`` loaded at start (the system account)."""
    entries = ", ".join(f"{check_public_key(k, KeyRole.ACCOUNT)}: {_quote(v)}" for k, v in sorted(accounts.items()))
    return f"resolver_preload: {{{entries}}}"


def operator_mode_config(operator_jwt: str, system_account: str, system_account_jwt: str,
                         resolver_dir: str | Path, *, interval: str = "2m", allow_delete: bool = False) -> str:
    """The four lines above, newline-terminated, ready to append to a server config."""
    return "\n".join((
        operator_line(operator_jwt),
        system_account_line(system_account),
        resolver_block(resolver_dir, interval=interval, allow_delete=allow_delete),
        resolver_preload_block({system_account: system_account_jwt}),
    )) + "\n"

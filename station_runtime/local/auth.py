"""The credentials of an embedded lattice: ``lattice up`` runs its nats-server in operator (JWT) mode, as a
Kubernetes install does, so that a process without the lattice's creds cannot connect at all, and a station can
do only what a station may (``natsauth.claims.station_permissions``, the same lists the operator issues).

Everything lives in ``{state_dir}/auth`` (mode 0700; files 0600, written whole and renamed):

* ``operator.json``: the operator's and the system account's keys; the server config is rendered from them;
* ``accounts/{org}.json``: the org's account key. An org's JetStream data lives under its account, so the key is
  kept across restarts: a new key would be a new, empty account;
* ``resolver/``: the server's account JWT store (pushed through the system account, as the operator does);
* ``{org}/admin.creds``: the controller's and the CLI's user (the CLI finds it through the discovery file);
* ``{org}/stations/{id}.creds``: one least-privilege user per station, made afresh at every (re)start.

A state dir written by an earlier, unauthenticated ``lattice up`` keeps its work: its org's streams are moved from
the server's global account into the org's account before the server starts (:func:`adopt_open_state`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ..contract import subjects
from ..contract.ids import validate_id
from ..errors import LatticeError
from ..natsauth import InvalidKeyError, KeyPair, KeyRole, OperatorKeys, OrgAccount, OrgAuthority, Tenancy

log = logging.getLogger(__name__)

#: The directory of a state dir that holds the keys and creds (``LocalAuth.open(state_dir / AUTH_DIR)``).
AUTH_DIR = "auth"
#: How long a station's creds last by default (renewed when a third is left).
DEFAULT_CREDS_LIFETIME_S = 24 * 3600.0
#: The name nats-server gives the one account of a server without accounts (its JetStream directory too).
GLOBAL_ACCOUNT = "$G"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by this user only, whole or not at all (a reader never sees half a key)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


class LocalAuth:
    """``auth = LocalAuth.open(state_dir / "auth")``; then :meth:`server_config` for the server,
    :meth:`provision` once it runs, and creds files for each process."""

    def __init__(self, root: Path, keys: OperatorKeys) -> None:
        self.root = root
        self.authority = OrgAuthority(keys)
        self._accounts: dict[str, OrgAccount] = {}

    @classmethod
    def open(cls, root: Path) -> LocalAuth:
        """The keys kept in ``root``, made on first use."""
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)  # also when it existed: the keys are in it
        path = root / "operator.json"
        if path.exists():
            try:
                keys = OperatorKeys.from_secret_data(json.loads(path.read_text()))
            except (ValueError, KeyError, TypeError, InvalidKeyError) as exc:
                raise ValueError(f"{path} is not the lattice's operator keys ({exc}): restore it, or remove the "
                                 f"whole {root} (the lattice's stored work is then lost)") from exc
        else:
            keys = OperatorKeys.generate("lattice-up")
            _write_private(path, json.dumps(keys.to_secret_data(), indent=1))
        return cls(root, keys)

    @property
    def resolver_dir(self) -> Path:
        return self.root / "resolver"

    def server_config(self) -> str:
        self.resolver_dir.mkdir(mode=0o700, exist_ok=True)
        return self.authority.server_config(self.resolver_dir)

    def account_key(self, org: str) -> KeyPair:
        """The org's account key, kept (made on first use)."""
        path = self.root / "accounts" / f"{validate_id(org, 'org id')}.json"
        if path.exists():
            try:
                return KeyPair.from_seed(json.loads(path.read_text())["seed"], KeyRole.ACCOUNT)
            except (ValueError, KeyError, TypeError, InvalidKeyError) as exc:
                raise ValueError(f"{path} is not an account key ({exc}): restore it; without it the org's stored "
                                 "work cannot be reached") from exc
        key = KeyPair.generate(KeyRole.ACCOUNT)
        _write_private(path, json.dumps({"org": org, "public_key": key.public_key, "seed": key.seed}))
        return key

    async def provision(self, url: str, org: str) -> OrgAccount:
        """Make the running server's resolver hold the org's account (idempotent: pushed only when it differs)."""
        async with await Tenancy.connect(url, self.authority, max_reconnect_attempts=3) as tenancy:
            account = await tenancy.ensure_org(org, account_key=self.account_key(org))
        self._accounts[org] = account
        return account

    def _account(self, org: str) -> OrgAccount:
        try:
            return self._accounts[org]
        except KeyError:
            raise RuntimeError(f"org {org} was not provisioned on this server") from None

    def admin_creds(self, org: str) -> Path:
        """The org's admin creds file (the controller, the CLI): a new user at every start."""
        path = admin_creds_path(self.root.parent, org)
        _write_private(path, self.authority.issue_admin_creds(self._account(org)))
        return path

    def station_creds(self, org: str, station_id: str, *, expires_at: int | None = None) -> Path:
        """A station's own creds file (a new user, ending at ``expires_at``), written in place so that a running
        station moves to it (``station.creds``); it must connect with ``station_inbox_prefix(station_id)``."""
        path = self.root / org / "stations" / f"{validate_id(station_id, 'station id')}.creds"
        _write_private(path, self.authority.issue_station_creds(self._account(org), station_id,
                                                                expires_at=expires_at))
        return path


def creds_lifetime_s() -> float:
    """How long a station's creds last before they are renewed (``LATTICE_STATION_CREDS_TTL`` seconds, default a
    day; at least 3 s). They are renewed when a third is left."""
    raw = os.environ.get("LATTICE_STATION_CREDS_TTL", "")
    try:
        value = float(raw) if raw else DEFAULT_CREDS_LIFETIME_S
    except ValueError:
        raise LatticeError(f"LATTICE_STATION_CREDS_TTL={raw!r} is not a number of seconds") from None
    if not value >= 3:  # also NaN
        raise LatticeError(f"LATTICE_STATION_CREDS_TTL={raw!r}: creds must last at least 3 seconds")
    return value


def admin_creds_path(state_dir: Path, org: str) -> Path:
    """Pure: where ``lattice up --state-dir state_dir`` keeps the org's admin creds."""
    return state_dir / AUTH_DIR / validate_id(org, "org id") / "admin.creds"


def adopt_open_state(jetstream_dir: Path, org: str, account: str) -> list[str]:
    """Move the org's streams written by an unauthenticated server (its global account) into the org's account,
    so that the first authenticated start finds its work where it was. Run with the server stopped. Streams of
    other orgs stay where they are (each org adopts its own on its own ``lattice up --org``). The names of the
    streams moved; none when there is nothing to move."""
    source = jetstream_dir / GLOBAL_ACCOUNT / "streams"
    target = jetstream_dir / account / "streams"
    moved = []
    for name in subjects.org_streams(org):
        if (source / name).is_dir() and not (target / name).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source / name), str(target / name))
            moved.append(name)
    if moved:
        log.info("org %s: moved %s from the unauthenticated store into account %s", org, ", ".join(moved), account)
    return moved

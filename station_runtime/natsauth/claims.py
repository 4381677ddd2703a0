"""Claims of the JWT chain, as plain dicts in the shape nats-server 2.15 reads, and the permission sets that are
the lattice's security boundary inside an org.

Pure: builds data, signs nothing (see :mod:`.jwt`), touches no network. Field names follow Go's nats-io/jwt v2
(``mem_storage``, not ``memory_storage``; ``resp`` is ``{"max", "ttl"}`` with ttl in nanoseconds).

Three facts shape everything below (checked against the server; ``tests/natsauth`` pins each):

* an account is usable only if ``conn``, ``subs`` and ``payload`` are non-zero, and has JetStream only if
  ``mem_storage`` or ``disk_storage`` is non-zero (0 disables, -1 is unlimited);
* a user needs ``subs`` and ``payload`` (-1), or its subscriptions are dead and its first publish disconnects it;
* an *empty* allow list means "no restriction", so "nothing" is always written as ``deny: [">"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..contract import subjects
from ..contract.ids import validate_id
from .keys import KeyRole, check_public_key

#: Every NATS limit: -1 means unlimited.
UNLIMITED: Final = -1
#: Streams an org uses: its KV buckets, the results object store, the events stream and the journal.
ORG_STREAMS: Final = len(subjects.org_streams("org"))
#: How long a station may take to answer a request it received (``resp`` ttl). The longest is a synchronous
#: invoke: ``InvokeRequest.timeout_s`` is at most 3600 s; the margin covers queueing and the reply itself.
#: Without an explicit ttl the server applies its default of 2 minutes, and a longer invoke could not answer.
RESPONSE_TTL_S: Final = 3600.0 + 120.0
#: The server's wildcard for "every subject".
ALL: Final = ">"


# --- limits ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountLimits:
    """Per-org limits written into the account JWT. Every field is -1 (unlimited) or positive; 0 is refused
    because it either breaks the account silently (conn/subs/payload) or means "unlimited" (streams/consumer),
    except that one of the two storages may be 0 to disable that kind of stream.

    The defaults are unlimited, so that the server's own limits bound an org (``max_connections``,
    ``max_payload``, ``jetstream.max_file_store``/``max_memory_store``) until the org's spec sets quotas.
    """

    #: Client connections of the org at once (stations, controllers, CLI sessions).
    conn: int = UNLIMITED
    #: Subscriptions across all the org's connections (a station holds about 10).
    subs: int = UNLIMITED
    #: Largest message in bytes; the server's ``max_payload`` applies as well.
    payload: int = UNLIMITED
    #: Bytes of message data (the NATS ``data`` limit).
    data: int = UNLIMITED
    #: Bytes of memory-backed JetStream storage (the lattice's own streams are all on file).
    mem_storage: int = UNLIMITED
    #: Bytes of file-backed JetStream storage: KV records, events, large results.
    disk_storage: int = UNLIMITED
    #: JetStream streams; the org needs :data:`ORG_STREAMS`.
    streams: int = UNLIMITED
    #: JetStream consumers; every KV watch and object read is a short-lived ephemeral consumer.
    consumer: int = UNLIMITED

    def __post_init__(self) -> None:
        for name in ("conn", "subs", "payload", "data", "streams", "consumer"):
            value = getattr(self, name)
            if value != UNLIMITED and value <= 0:
                raise ValueError(f"account limit {name} must be -1 (unlimited) or positive, got {value}")
        for name in ("mem_storage", "disk_storage"):
            value = getattr(self, name)
            if value != UNLIMITED and value < 0:
                raise ValueError(f"account limit {name} must be -1 (unlimited), 0 (off) or positive, got {value}")
        if self.disk_storage == 0:
            raise ValueError("account limit disk_storage must not be 0: the org's buckets and streams are on file")
        if self.streams != UNLIMITED and self.streams < ORG_STREAMS:
            raise ValueError(f"account limit streams must be at least {ORG_STREAMS} (the org's buckets and "
                             f"streams), got {self.streams}")

    def to_claims(self) -> dict[str, Any]:
        return {
            "subs": self.subs, "data": self.data, "payload": self.payload,
            # Org accounts neither import nor export; -1/true/-1 are the values verified against the server.
            "imports": UNLIMITED, "exports": UNLIMITED, "wildcards": True, "conn": self.conn, "leaf": UNLIMITED,
            "mem_storage": self.mem_storage, "disk_storage": self.disk_storage,
            "streams": self.streams, "consumer": self.consumer,
        }


# --- permissions -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponsePermission:
    """``allow_responses``: publish up to ``max_msgs`` replies to each request received, within ``ttl_s``."""

    max_msgs: int = 1
    ttl_s: float = RESPONSE_TTL_S

    def to_claims(self) -> dict[str, int]:
        return {"max": self.max_msgs, "ttl": int(self.ttl_s * 1_000_000_000)}


@dataclass(frozen=True)
class Permissions:
    """Publish/subscribe allow and deny lists of a user. An empty allow list means *nothing* here (it is
    written as ``deny: [">"]``), never "everything" as the server would read it; use ``(">",)`` for that."""

    pub_allow: tuple[str, ...] = ()
    pub_deny: tuple[str, ...] = ()
    sub_allow: tuple[str, ...] = ()
    sub_deny: tuple[str, ...] = ()
    responses: ResponsePermission | None = None

    @classmethod
    def unrestricted(cls) -> Permissions:
        return cls(pub_allow=(ALL,), sub_allow=(ALL,))

    def to_claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pub": _subject_permission(self.pub_allow, self.pub_deny),
                               "sub": _subject_permission(self.sub_allow, self.sub_deny)}
        if self.responses is not None:
            out["resp"] = self.responses.to_claims()
        return out


def _subject_permission(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
    if not allow:
        return {"deny": sorted({ALL, *deny})}
    out = {"allow": list(allow)}
    if deny:
        out["deny"] = list(deny)
    return out


def station_permissions(org: str, station_id: str) -> Permissions:
    """Least privilege for station ``station_id`` of ``org``: what ``station_runtime.station`` needs, nothing more
    (a test runs a station and checks both ways: every subject it uses is allowed, every permission is used).

    Every entry is built by :mod:`station_runtime.contract.subjects`, the builders the station itself uses, so
    the permissions cannot drift from the subjects they guard. Inside the org account a station can read what its
    org shares (agent definitions, work records), but it can only *write* under its own name where the subject
    carries a name (its presence record), and it can only *receive* requests addressed to it, the org's auction,
    and replies in its own inbox. Other orgs are out of reach because they are other accounts. Payloads naming a
    station (heartbeats, bids, work notices) cannot be bound to the sender by subject permissions; the KV records,
    written with compare-and-set and fenced by attempt id, are what the lattice trusts.
    """
    me = validate_id(station_id, "station id")
    stations, agents, work = (subjects.bucket(org, kind) for kind in ("stations", "agents", "work"))
    stations_stream, agents_stream, work_stream = (subjects.kv_stream(b) for b in (stations, agents, work))
    results = subjects.results_bucket(org)
    results_stream = subjects.object_stream(results)
    journal_stream = subjects.journal_stream(org)
    pub = (
        # Presence broadcasts: announce (start), heartbeat (every beat), goodbye (stop).
        subjects.presence(org, "announce"),
        subjects.presence(org, "heartbeat"),
        subjects.presence(org, "goodbye"),
        # Live progress of the work it runs (≤ 10/s); the outcome is the stored record, pushed by the server.
        subjects.work_progress_all(org),
        # CloudEvents it records in the org's events stream: station.joined|left, work.started|progress|...
        subjects.events_category(org, "station"),
        subjects.events_category(org, "work"),
        # KV writes (create/update/delete) of its own presence record only: key = its station id.
        subjects.kv_key(stations, me),
        # KV writes of work records: compare-and-set of the attempts it runs (any key: the record says whose).
        subjects.kv_all(work),
        # Large results: chunks and metadata of the results object store.
        subjects.object_all(results),
        # Appends to the journals of the runs it runs (compare-and-set on the run's last entry, and the journal
        # fenced by attempt: a later attempt's marker makes every append of an earlier one fail).
        subjects.journal_all(org),
        # -- JetStream API, per stream, only what the station calls --
        # Presence bucket: bind + status (reads the TTL); direct get of its own key after a CAS conflict.
        subjects.js_stream_info(stations_stream),
        subjects.js_direct_get(stations_stream, subjects.kv_key(stations, me)),
        # Agents bucket: bind; the live watch: an exact listing (batch direct get) and the bucket's republished
        # changes (a subscription, below). No consumer of any stream: a consumer's deliver subject is not checked
        # against its creator's permissions, so with that right a station could aim the server's deliveries at
        # another station's subjects.
        subjects.js_stream_info(agents_stream),
        subjects.js_direct_get(agents_stream),
        # Work bucket: bind; direct get of a record (re-read after a CAS conflict or an outage: the subject goes
        # in the request, with the revision the replica must have reached); the listing on start (propulsion), a
        # batch direct get that leaves no consumer behind.
        subjects.js_stream_info(work_stream),
        subjects.js_direct_get(work_stream),
        # Results object store: bind; look up whether the object exists (its last metadata message). Each
        # attempt writes its own object, so a station never replaces, deletes or purges one: no purge permission
        # (with one, a station could purge the whole store in one request).
        subjects.js_stream_info(results_stream),
        subjects.js_stream_msg_get(results_stream),
        # ... and reads the chunks of a large journal entry by batch direct get (no consumer, nothing left behind).
        subjects.js_direct_get(results_stream),
        # Journal stream: a resumed run reads its entries (batch direct get by subject, which also answers
        # "which entry is last" after an append whose acknowledgement was lost). No purge: the controller deletes
        # a journal with its record.
        subjects.js_direct_get(journal_stream),
    )
    sub = (
        # Requests addressed to it: agent.invoke, work.assign, work.cancel, its auctions, ping.
        subjects.station_all(org, me),
        # Its own inbox: replies to its JetStream API calls, publish acks, KV watch deliveries.
        subjects.inbox_all(subjects.station_inbox_prefix(me)),
        # Delegation: the records (and progress) of the children it awaits; it may read any record anyway.
        subjects.work_updates_all(org),
        # The agents it may host, as the server republishes their changes.
        subjects.agent_updates_all(org),
    )
    # Replies to the requests it received (invoke, assign, bids): once each, into the requester's inbox, which
    # it may not publish to otherwise.
    return Permissions(pub_allow=pub, sub_allow=sub, responses=ResponsePermission())


def org_admin_permissions(org: str) -> Permissions:
    """The org's controller (operator, auctioneer, witness, ``lattice`` CLI as admin): everything in the org's
    subject space and the JetStream API of its account (which holds only this org's streams), including creating
    the org's buckets and streams. It uses the default ``_INBOX`` prefix, which no station can subscribe to."""
    root = subjects.org_root(org)
    buckets = [subjects.bucket(org, kind) for kind in ("stations", "agents", "work", "toolservers")]
    return Permissions(
        pub_allow=(
            f"{root}.>",  # every lattice subject of the org: auctions, assignments, cancels, invokes, events
            f"{subjects.JS_API}.>",  # JetStream API of the account: the org's streams and consumers
            "$JS.ACK.>",  # acknowledgements of consumers with explicit acks
            "$JS.FC.>",  # flow control replies of push consumers (watches, event replays, object reads)
            *(subjects.kv_all(b) for b in buckets),  # KV writes: agents, work records, presence clean-up, ToolServers
            subjects.object_all(subjects.results_bucket(org)),  # reading/writing/deleting large results
        ),
        sub_allow=(f"{root}.>", subjects.inbox_all(subjects.INBOX_PREFIX)),
        responses=ResponsePermission(),
    )


def system_user_permissions() -> Permissions:
    """The operator's user in the system account: managing account JWTs, nothing else."""
    return Permissions(
        pub_allow=(
            subjects.SYS_CLAIMS_UPDATE,  # push an account JWT to every full resolver
            subjects.SYS_CLAIMS_LIST,  # list the stored accounts
            subjects.sys_account_claims("*", "UPDATE"),  # push one account, checked against the subject's key
            subjects.sys_account_claims("*", "LOOKUP"),  # read back what a resolver stores
        ),
        sub_allow=(subjects.inbox_all(subjects.INBOX_PREFIX),),
    )


# --- claims ----------------------------------------------------------------------------------------------------


def operator_claims(operator_public_key: str, name: str, system_account: str, *, signing_keys: Iterable[str] = (),
                    strict_signing_key_usage: bool = False) -> dict[str, Any]:
    """Self-signed operator claims. With ``strict_signing_key_usage`` the server accepts only accounts signed by
    one of ``signing_keys`` (and only users signed by account signing keys)."""
    nats: dict[str, Any] = {"type": "operator", "version": 2,
                            "system_account": check_public_key(system_account, KeyRole.ACCOUNT)}
    keys = [check_public_key(k, KeyRole.OPERATOR) for k in signing_keys]
    if keys:
        nats["signing_keys"] = keys
    if strict_signing_key_usage:
        nats["strict_signing_key_usage"] = True
    return {"sub": check_public_key(operator_public_key, KeyRole.OPERATOR), "name": name, "nats": nats}


def account_claims(account_public_key: str, name: str, limits: AccountLimits | None = None, *,
                   jetstream: bool = True, revocations: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Account claims for an org (``name`` = the org id) or, with ``jetstream=False``, the system account (which
    must not have JetStream). Users whose JWT has no permissions get none (``default_permissions`` deny all):
    every user we issue carries its own lists. ``revocations`` maps a user public key (or ``"*"``: every user)
    to a unix time; users issued before it are refused and disconnected."""
    limits = limits or AccountLimits()
    account_limits = limits.to_claims()
    if not jetstream:
        for key in ("mem_storage", "disk_storage", "streams", "consumer"):
            account_limits.pop(key)
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": account_limits,
                            "default_permissions": Permissions().to_claims()}
    if revocations:
        nats["revocations"] = {(k if k == "*" else check_public_key(k, KeyRole.USER)): int(v)
                               for k, v in sorted(revocations.items())}
    return {"sub": check_public_key(account_public_key, KeyRole.ACCOUNT), "name": name, "nats": nats}


def user_claims(user_public_key: str, name: str, permissions: Permissions, *, issuer_account: str | None = None,
                expires_at: int | None = None) -> dict[str, Any]:
    """User claims with ``permissions``; subs/data/payload are -1 (the account's limits bound them).
    ``issuer_account`` is set only when an account *signing key* (not the account itself) signs the user."""
    nats: dict[str, Any] = {"type": "user", "version": 2, "subs": UNLIMITED, "data": UNLIMITED,
                            "payload": UNLIMITED, **permissions.to_claims()}
    if issuer_account is not None:
        nats["issuer_account"] = check_public_key(issuer_account, KeyRole.ACCOUNT)
    claims: dict[str, Any] = {"sub": check_public_key(user_public_key, KeyRole.USER), "name": name}
    if expires_at is not None:
        claims["exp"] = int(expires_at)
    claims["nats"] = nats
    return claims


# --- creds -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The two halves of a ``.creds`` file. Both are secrets: neither is shown in ``repr``."""

    jwt: str = field(repr=False)
    seed: str = field(repr=False)


def creds(jwt: str, seed: str) -> str:
    """A ``.creds`` file as nats-py and the Go tools parse it: LF line ends only, the JWT on the line right after
    its BEGIN line, the seed likewise, and a final newline (nats-py fails on CRLF, on a blank line after BEGIN
    and on a seed without a trailing newline)."""
    if not jwt or any(c in jwt for c in "\r\n") or not seed or any(c in seed for c in "\r\n"):
        raise ValueError("creds need a one-line JWT and a one-line seed")
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def parse_creds(text: str) -> Credentials:
    """The JWT and seed of a ``.creds`` text (the line after each BEGIN line); raises ValueError if absent."""
    lines = text.replace("\r\n", "\n").split("\n")

    def after(marker: str) -> str:
        for i, line in enumerate(lines[:-1]):
            if marker in line and lines[i + 1].strip():
                return lines[i + 1].strip()
        raise ValueError(f"creds have no {marker!r} section")

    return Credentials(jwt=after("BEGIN NATS USER JWT"), seed=after("BEGIN USER NKEY SEED"))

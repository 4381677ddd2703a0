"""Every NATS subject, KV bucket, stream name and header name of the lattice, built (and parsed) in one place.

    lattice.v1.{org}.presence.announce|heartbeat|goodbye
    lattice.v1.{org}.station.{station}.agent.invoke      request/reply: synchronous run of one agent
    lattice.v1.{org}.station.{station}.work.assign       request/reply: an assignment (or an offer) to the station
    lattice.v1.{org}.station.{station}.work.cancel
    lattice.v1.{org}.station.{station}.auction.request   an auction for a chosen few (large lattices)
    lattice.v1.{org}.station.{station}.ping               answered while the station is connected
    lattice.v1.{org}.auction.request                      broadcast; stations answer with bids
    lattice.v1.{org}.work.{work}.progress                 live progress from the station running it
    lattice.v1.{org}.work.{work}.record                   every stored version of the record, republished by
                                                          the server (Nats-Sequence header: its revision):
                                                          the outcome notification, never ahead of the store
    lattice.v1.{org}.events.{station|agent|work}.{type}   CloudEvents 1.0, persisted in the org's stream
    lattice.v1.{org}.journal.{work}                       a run's journal, one message per entry, in the org's
                                                          journal stream (appends chained by compare-and-set)

and the JetStream names behind the org's state: KV buckets ``lattice-{org}-{stations|agents|work}`` (streams
``KV_…``, subjects ``$KV.{bucket}.{key}``), the results object store ``lattice-{org}-work-results`` (stream
``OBJ_…``, subjects ``$O.{bucket}.…``), the events stream ``lattice-{org}-events``, the journal stream
``lattice-{org}-journal``, and the ``$JS.API`` subjects a
station's permissions name (:mod:`station_runtime.natsauth.claims` derives them from the builders here).

Builders validate every id they splice in, so no caller can build a subject with a stray wildcard; the ``*_all``
builders are the wildcard forms, for subscriptions and permissions.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, get_args

from .ids import validate_id

PREFIX: Final = "lattice.v1"
PresenceKind = Literal["announce", "heartbeat", "goodbye"]
#: ``record``: every stored version of the work record, published by the server itself (KV republish) once it is
#: stored; this is how waiters learn the outcome. ``progress``: live progress from the station running it.
WorkUpdate = Literal["progress", "record"]
EventCategory = Literal["station", "agent", "work", "security"]
#: ``toolservers``: the org's ToolServers as ``lattice apply`` stores them (embedded; on Kubernetes they are
#: resources); read and written by the org's admin only: stations get them inside the agents that name them.
Bucket = Literal["stations", "agents", "work", "toolservers"]
#: The default reply-inbox prefix of NATS clients (the org's admin and CLI use it; stations have their own).
INBOX_PREFIX: Final = "_INBOX"
JS_API: Final = "$JS.API"


class Header(enum.StrEnum):
    """NATS and JetStream header names the lattice reads or sets."""

    #: A status message (no payload): ``503`` no responders, ``204`` end of a batch, ``408``/``404``/``413`` errors.
    STATUS = "Status"
    DESCRIPTION = "Description"
    #: The stream sequence of a message: a KV entry's revision.
    SEQUENCE = "Nats-Sequence"
    SUBJECT = "Nats-Subject"
    #: Of a batch answer: messages still to come after this one (0 on the last).
    NUM_PENDING = "Nats-Num-Pending"
    LAST_SEQUENCE = "Nats-Last-Sequence"
    #: Compare-and-set: write only if the subject's last sequence is this (0: it has none).
    EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
    #: ``DEL`` or ``PURGE`` on a KV delete marker.
    KV_OPERATION = "KV-Operation"
    #: A message's time to live (``"86400s"``): the server deletes it then (streams with message TTLs).
    TTL = "Nats-TTL"
    #: On the marker the server leaves where a message expired (``MaxAge``) or was removed (``Remove``).
    MARKER_REASON = "Nats-Marker-Reason"


class Status(enum.StrEnum):
    """Values of the ``Status`` header."""

    NO_RESPONDERS = "503"
    END_OF_BATCH = "204"
    NOT_FOUND = "404"
    TIMEOUT = "408"
    #: A direct get's ``min_last_seq`` is ahead of the answering replica (a follower still catching up).
    MIN_LAST_SEQUENCE = "412"


def org_root(org: str) -> str:
    return f"{PREFIX}.{validate_id(org, 'org id')}"


def presence(org: str, kind: PresenceKind) -> str:
    return f"{org_root(org)}.presence.{kind}"


def presence_all(org: str) -> str:
    return f"{org_root(org)}.presence.*"


def _station(org: str, station: str) -> str:
    return f"{org_root(org)}.station.{validate_id(station, 'station id')}"


def station_all(org: str, station: str) -> str:
    """Every request addressed to one station (invoke, assign, cancel, its auctions, ping)."""
    return f"{_station(org, station)}.>"


def agent_invoke(org: str, station: str) -> str:
    return f"{_station(org, station)}.agent.invoke"


def station_ping(org: str, station: str) -> str:
    """Answered by a live station (empty reply). NATS says "no responders" at once for a station whose
    connection is gone: the witness's proof that an overdue station is dead, without waiting out its beats."""
    return f"{_station(org, station)}.ping"


def work_assign(org: str, station: str) -> str:
    return f"{_station(org, station)}.work.assign"


def work_cancel(org: str, station: str) -> str:
    return f"{_station(org, station)}.work.cancel"


def station_auction(org: str, station: str) -> str:
    """An auction request for one station, the only form there is: each asked station gets its own, with itself
    in the reply subject, so a bid is taken only from the station it names (a station may answer only the
    requests it received). A broadcast with one reply subject for all would let a station bid in another's name."""
    return f"{_station(org, station)}.auction.request"


def work_update(org: str, work: str, kind: WorkUpdate) -> str:
    return f"{org_root(org)}.work.{validate_id(work, 'work id')}.{kind}"


def work_updates_all(org: str, work: str | None = None) -> str:
    """Progress and records of one work item (or, with ``work=None``, of all)."""
    token = "*" if work is None else validate_id(work, "work id")
    return f"{org_root(org)}.work.{token}.*"


def work_progress_all(org: str) -> str:
    return f"{org_root(org)}.work.*.progress"


def parse_work_update(subject: str) -> tuple[str, WorkUpdate] | None:
    """``(work id, kind)`` of a ``work.{id}.progress|record`` subject; None for anything else."""
    head, _, rest = subject.rpartition(".work.")
    work, _, kind = rest.partition(".")
    if not head.startswith(f"{PREFIX}.") or not work or "." in kind:
        return None
    if kind == "progress":
        return work, "progress"
    if kind == "record":
        return work, "record"
    return None


def agent_republish(org: str) -> tuple[str, str]:
    """The agents bucket's republish mapping (source, destination): every stored version of an agent (and its
    deletion) is also published on ``agents.{name}``, which stations follow with a plain subscription. So a
    station needs no JetStream consumer: a consumer's deliver subject is not checked against its creator's
    permissions, and with consumer rights a station could have the server deliver onto another station's
    subjects."""
    return kv_all(bucket(org, "agents"), "*"), f"{org_root(org)}.agents.{{{{wildcard(1)}}}}"


def agent_updates_all(org: str) -> str:
    return f"{org_root(org)}.agents.*"


def work_record_republish(org: str) -> tuple[str, str]:
    """The work bucket's republish mapping (source, destination): once stored, every version of a record is also
    published on ``work.{id}.record``, so a waiter gets the record pushed instead of reading it again."""
    return kv_all(bucket(org, "work"), "*"), f"{org_root(org)}.work.{{{{wildcard(1)}}}}.record"


def event(org: str, category: EventCategory, type_: str) -> str:
    return f"{org_root(org)}.events.{category}.{validate_id(type_, 'event type')}"


def events_category(org: str, category: EventCategory) -> str:
    return f"{org_root(org)}.events.{category}.*"


def events_all(org: str) -> str:
    return f"{org_root(org)}.events.>"


def journal(org: str, work: str) -> str:
    """The journal of one run (every attempt of work ``work``): appended by the station running it."""
    return f"{org_root(org)}.journal.{validate_id(work, 'work id')}"


def journal_all(org: str) -> str:
    return f"{org_root(org)}.journal.*"


def matches(pattern: str, subject: str) -> bool:
    """Pure: does ``subject`` match the NATS ``pattern`` (``*`` one token, a final ``>`` one or more)?"""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return i == len(want) - 1 and len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


def parse_org(subject: str) -> str | None:
    """The org token of a lattice subject, or None if the subject is not a lattice subject."""
    parts = subject.split(".", 3)
    if len(parts) < 3 or f"{parts[0]}.{parts[1]}" != PREFIX:
        return None
    return parts[2]


# --- inboxes ---------------------------------------------------------------------------------------------------


def station_inbox_prefix(station_id: str) -> str:
    """The inbox prefix a station connects with (``NatsSettings(inbox_prefix=...)``): in JWT mode its only
    subscribable reply space, so that no station can read replies meant for another station of its org."""
    return f"{INBOX_PREFIX}_{validate_id(station_id, 'station id')}"


def inbox_all(prefix: str) -> str:
    return f"{prefix}.>"


# --- JetStream: buckets, streams and the API subjects the lattice uses --------------------------------------------


def bucket(org: str, kind: Bucket) -> str:
    """Name of the org's KV bucket. The org is part of the name so that orgs sharing one NATS account
    (embedded mode) never share state; with one account per org it is merely redundant."""
    return f"lattice-{validate_id(org, 'org id')}-{kind}"


def results_bucket(org: str) -> str:
    """The org's object store for large work results."""
    return f"{bucket(org, 'work')}-results"


def events_stream(org: str) -> str:
    return f"lattice-{validate_id(org, 'org id')}-events"


def journal_stream(org: str) -> str:
    return f"lattice-{validate_id(org, 'org id')}-journal"


def org_streams(org: str) -> tuple[str, ...]:
    """Every stream an org's state is made of: its KV buckets, the results object store, events, the journal."""
    kv = tuple(kv_stream(bucket(org, kind)) for kind in get_args(Bucket))
    return (*kv, object_stream(results_bucket(org)), events_stream(org), journal_stream(org))


def kv_stream(bucket_name: str) -> str:
    return f"KV_{bucket_name}"


def object_stream(bucket_name: str) -> str:
    return f"OBJ_{bucket_name}"


def kv_key(bucket_name: str, key: str) -> str:
    """The subject of one KV key: a write is a publish to it, its revision is its stream sequence."""
    return f"$KV.{bucket_name}.{key}"


def kv_all(bucket_name: str, wildcard: Literal[">", "*"] = ">") -> str:
    return f"$KV.{bucket_name}.{wildcard}"


def object_all(bucket_name: str) -> str:
    """Chunks (``$O.{b}.C.{nuid}``) and metadata (``$O.{b}.M.{name}``) of an object store."""
    return f"$O.{bucket_name}.>"


def js_stream_info(stream: str) -> str:
    return f"{JS_API}.STREAM.INFO.{stream}"


def js_direct_get(stream: str, subject: str | None = None) -> str:
    """Direct get: of the last message on ``subject``, or (``subject=None``) the batch form, whose request names
    what to read (``{"seq", "batch", "next_by_subj"}``) and whose answer ends with a ``204`` status message."""
    return f"{JS_API}.DIRECT.GET.{stream}" + (f".{subject}" if subject is not None else "")


def js_consumer_create(stream: str) -> str:
    """Creating an ephemeral consumer (nats-py 2.16 uses the form without a consumer name)."""
    return f"{JS_API}.CONSUMER.CREATE.{stream}"


def js_consumer_info(stream: str, consumer: str = "*") -> str:
    return f"{JS_API}.CONSUMER.INFO.{stream}.{consumer}"


def js_flow_control(stream: str) -> str:
    """Flow-control replies of a push consumer on ``stream`` (a watch that moves a lot of data answers them)."""
    return f"$JS.FC.{stream}.>"


def js_stream_purge(stream: str) -> str:
    """Purging a stream (with ``{"filter": subject}``: only that subject's messages)."""
    return f"{JS_API}.STREAM.PURGE.{stream}"


def js_stream_msg_get(stream: str) -> str:
    return f"{JS_API}.STREAM.MSG.GET.{stream}"


# --- the system account: account JWTs (JWT mode) --------------------------------------------------------------

#: Push an account JWT to every full resolver; list the stored accounts.
SYS_CLAIMS_UPDATE: Final = "$SYS.REQ.CLAIMS.UPDATE"
SYS_CLAIMS_LIST: Final = "$SYS.REQ.CLAIMS.LIST"


def sys_account_claims(account: str, verb: Literal["UPDATE", "LOOKUP"]) -> str:
    """Push one account JWT (checked by the server against the subject's key), or read back what a resolver
    stores. ``account`` is a public account key (checked by the caller) or ``*`` for permissions."""
    return f"$SYS.REQ.ACCOUNT.{account}.CLAIMS.{verb}"

"""Every NATS subject, KV bucket and stream name of the lattice, built in one place.

    lattice.v1.{org}.presence.announce|heartbeat|goodbye
    lattice.v1.{org}.station.{station}.agent.invoke      request/reply: synchronous run of one agent
    lattice.v1.{org}.station.{station}.workflow.run
    lattice.v1.{org}.station.{station}.work.assign
    lattice.v1.{org}.station.{station}.work.cancel
    lattice.v1.{org}.station.{station}.auction.request   an auction for a chosen few (large lattices)
    lattice.v1.{org}.station.{station}.ping               answered while the station is connected
    lattice.v1.{org}.auction.request                      broadcast; stations answer with bids
    lattice.v1.{org}.work.{work}.progress                 live progress from the station running it
    lattice.v1.{org}.work.{work}.record                   every stored version of the record, republished by
                                                          the server (Nats-Sequence header: its revision):
                                                          the outcome notification, never ahead of the store
    lattice.v1.{org}.events.{station|agent|work}.{type}   CloudEvents 1.0, persisted in the org's stream

Builders validate every id they splice in, so no caller can build a subject with a stray wildcard.
"""

from __future__ import annotations

from typing import Final, Literal

from .ids import validate_id

PREFIX: Final = "lattice.v1"
PresenceKind = Literal["announce", "heartbeat", "goodbye"]
#: ``record``: every stored version of the work record, published by the server itself (KV republish) once it is
#: stored; this is how waiters learn the outcome. ``progress``: live progress from the station running it.
WorkUpdate = Literal["progress", "record"]
EventCategory = Literal["station", "agent", "work"]
Bucket = Literal["stations", "agents", "work"]


def org_root(org: str) -> str:
    return f"{PREFIX}.{validate_id(org, 'org id')}"


def presence(org: str, kind: PresenceKind) -> str:
    return f"{org_root(org)}.presence.{kind}"


def presence_all(org: str) -> str:
    return f"{org_root(org)}.presence.*"


def _station(org: str, station: str) -> str:
    return f"{org_root(org)}.station.{validate_id(station, 'station id')}"


def agent_invoke(org: str, station: str) -> str:
    return f"{_station(org, station)}.agent.invoke"


def workflow_run(org: str, station: str) -> str:
    return f"{_station(org, station)}.workflow.run"


def station_ping(org: str, station: str) -> str:
    """Answered by a live station (empty reply). NATS says "no responders" at once for a station whose
    connection is gone: the witness's proof that an overdue station is dead, without waiting out its beats."""
    return f"{_station(org, station)}.ping"


def work_assign(org: str, station: str) -> str:
    return f"{_station(org, station)}.work.assign"


def work_cancel(org: str, station: str) -> str:
    return f"{_station(org, station)}.work.cancel"


def station_auction(org: str, station: str) -> str:
    """An auction request for one station: the auctioneer asks a load-aware sample instead of everyone."""
    return f"{_station(org, station)}.auction.request"


def auction_request(org: str) -> str:
    return f"{org_root(org)}.auction.request"


def work_update(org: str, work: str, kind: WorkUpdate) -> str:
    return f"{org_root(org)}.work.{validate_id(work, 'work id')}.{kind}"


def work_updates_all(org: str, work: str | None = None) -> str:
    token = "*" if work is None else validate_id(work, "work id")
    return f"{org_root(org)}.work.{token}.*"


def work_record_republish(org: str) -> tuple[str, str]:
    """The work bucket's republish mapping (source, destination): once stored, every version of a record is also
    published on ``work.{id}.record``, so a waiter gets the record pushed instead of reading it again."""
    return f"$KV.{bucket(org, 'work')}.*", f"{org_root(org)}.work.{{{{wildcard(1)}}}}.record"


def event(org: str, category: EventCategory, type_: str) -> str:
    return f"{org_root(org)}.events.{category}.{validate_id(type_, 'event type')}"


def events_all(org: str) -> str:
    return f"{org_root(org)}.events.>"


def bucket(org: str, kind: Bucket) -> str:
    """Name of the org's KV bucket. The org is part of the name so that orgs sharing one NATS account
    (embedded mode) never share state; with one account per org it is merely redundant."""
    return f"lattice-{validate_id(org, 'org id')}-{kind}"


def events_stream(org: str) -> str:
    return f"lattice-{validate_id(org, 'org id')}-events"


def parse_org(subject: str) -> str | None:
    """The org token of a lattice subject, or None if the subject is not a lattice subject."""
    parts = subject.split(".", 3)
    if len(parts) < 3 or f"{parts[0]}.{parts[1]}" != PREFIX:
        return None
    return parts[2]

"""A station takes the record from the store, never from the message: a forged `work.assign` carrying a doctored
copy of the record (another input, a required label dropped) at the real revision does not change what runs nor
what is stored; one at a wrong revision, for a record assigned elsewhere, or for work that does not exist is
declined, saying why, and counted."""

from __future__ import annotations

import pytest

from station_runtime.api.models import WorkConstraints, WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract import subjects
from station_runtime.contract.codec import decode, encode
from station_runtime.contract.ids import new_attempt_id
from station_runtime.contract.messages import (
    WorkAccept,
    WorkAssign,
    WorkPhase,
    WorkRecord,
    utcnow,
)
from station_runtime.station.admission import confirm_assignment
from station_runtime.work import phases
from tests.support.lattice import echo_agent, running_station

pytestmark = pytest.mark.timeout(60)


def _placing(work_id: str, **spec: object) -> WorkRecord:
    now = utcnow()
    return WorkRecord(org="o", work_id=work_id, spec=WorkItemSpec(agent="echo", input="the real input", **spec),
                      phase=WorkPhase.SCHEDULING, created_at=now, updated_at=now)


def _named(stored: WorkRecord, station: str, **update: object) -> WorkRecord:
    """What a forger sends: the next attempt on ``station``, with whatever it likes in the copy."""
    return stored.model_copy(update={"phase": WorkPhase.ASSIGNED, "station_id": station, "attempt": stored.attempt + 1,
                                     "attempt_id": new_attempt_id(), **update})


def test_only_the_store_decides_what_an_assignment_is() -> None:
    stored = _placing("w1", constraints=WorkConstraints(labels={"gpu": "yes"}))
    doctored = _named(stored, "s1", spec=WorkItemSpec(agent="echo", input="EVIL"))
    confirmed = confirm_assignment(stored, 7, doctored, 7, "s1")
    assert isinstance(confirmed, WorkRecord)
    assert confirmed.spec == stored.spec and confirmed.spec.constraints.labels == {"gpu": "yes"}
    assert (confirmed.phase, confirmed.station_id, confirmed.attempt_id) == (WorkPhase.ASSIGNED, "s1",
                                                                              doctored.attempt_id)
    assert "stale" in str(confirm_assignment(stored, 8, doctored, 7, "s1"))
    assert "next attempt" in str(confirm_assignment(stored, 7, _named(stored, "s1", attempt=5), 7, "s1"))
    assigned = phases.transition(stored, WorkPhase.ASSIGNED, station_id="s2", attempt=1, attempt_id="a2")
    assert "assigned to s2" in str(confirm_assignment(assigned, 9, _named(stored, "s1"), 9, "s1"))
    mine = assigned.model_copy(update={"station_id": "s1"})
    assert confirm_assignment(mine, 9, mine.model_copy(update={"spec": doctored.spec}), 9, "s1") == mine
    cancelled = stored.model_copy(update={"cancel_requested": True})
    assert "cancel requested" in str(confirm_assignment(cancelled, 7, doctored, 7, "s1"))
    assert "Pending" in str(confirm_assignment(stored.model_copy(update={"phase": WorkPhase.PENDING}), 7, doctored,
                                               7, "s1"))


async def _assign(client: LatticeClient, org: str, station: str, assign: WorkAssign) -> WorkAccept:
    assert client.nc is not None
    reply = await client.nc.request(subjects.work_assign(org, station), encode(assign), timeout=5)
    return decode(reply.data, WorkAccept)


async def test_a_forged_assignment_with_a_doctored_record_runs_what_is_stored(
        client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(echo_agent("echo"))
    store = await client.work_store()
    async with running_station(nats_url, org, "s1"):
        await client.wait_for_stations(1, agent="echo", timeout_s=10)
        # Stored as being placed, with nobody placing it (no controller): only the forger sends an assignment.
        stored, _ = await store.create(_placing("forged-1").model_copy(update={"org": org}))
        doctored = _named(stored.record, "s1", spec=WorkItemSpec(agent="echo", input="EVIL"))
        answer = await _assign(client, org, "s1", WorkAssign(record=doctored, revision=stored.revision))
        assert answer.accepted  # the station claims the stored record, as if placed (placement is item 3's)
        done = await client.wait_work("forged-1", timeout_s=10)
        assert done.result == "the real input" and done.spec == stored.record.spec

        stale = await _assign(client, org, "s1", WorkAssign(record=doctored, revision=stored.revision + 100))
        assert not stale.accepted and "does not exist" not in stale.reason
        other, _ = await store.create(_placing("forged-2").model_copy(update={"org": org}))
        elsewhere = phases.transition(other.record, WorkPhase.ASSIGNED, station_id="s9", attempt=1,
                                      attempt_id="a9")
        revision = await store.write(elsewhere, other.revision)
        stolen = await _assign(client, org, "s1", WorkAssign(record=_named(other.record, "s1"), revision=revision))
        assert not stolen.accepted and "assigned to s9" in stolen.reason
        missing = await _assign(client, org, "s1", WorkAssign(record=_named(_placing("nowhere"), "s1"), revision=1))
        assert not missing.accepted and "does not exist" in missing.reason
        after = await store.get("forged-2")
        assert after is not None and after.record == elsewhere  # nothing written

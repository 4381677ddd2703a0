"""An org's stores on a three-node cluster: created with the replicas the lattice is set to, moved there when they
were made R1, refused with what to do when the servers cannot hold them."""

from __future__ import annotations

import dataclasses

import nats
import pytest
from nats.js.api import StreamInfo

from station_runtime.errors import StateLayoutError
from station_runtime.natsio.cluster import EmbeddedCluster
from station_runtime.natsio.connect import NatsSettings, connect, server_list
from station_runtime.natsio.state import REPLICAS_ENV, OrgState, StateLimits
from tests.support.limits import TEST_LIMITS

pytestmark = pytest.mark.timeout(60)
R3 = dataclasses.replace(TEST_LIMITS, replicas=3)


async def org_streams(cluster: EmbeddedCluster, org: str) -> dict[str, StreamInfo]:
    nc = await nats.connect(servers=cluster.urls)
    try:
        return {i.config.name: i for i in await nc.jetstream().streams_info() if org in (i.config.name or "")}
    finally:
        await nc.close()


async def open_state(url: str, org: str, limits: StateLimits) -> OrgState:
    nc = await connect(NatsSettings(url=url))
    state = await OrgState.open(nc, org, limits, create=True)
    await state.results()
    await state.tool_servers()
    return state


async def test_an_orgs_stores_are_created_on_three_servers(cluster: EmbeddedCluster, org: str) -> None:
    state = await open_state(cluster.url, org, R3)
    try:
        streams = await org_streams(cluster, org)
        # stations, agents, work, toolservers, results, events, journal
        assert len(streams) == 7, sorted(streams)
        for name, info in streams.items():
            assert info.config.num_replicas == 3, name
            assert info.cluster is not None and info.cluster.leader in cluster.names, name
    finally:
        await state.nc.close()


async def test_r1_state_is_moved_to_three_servers_and_keeps_its_records(cluster: EmbeddedCluster, org: str) -> None:
    state = await open_state(cluster.url, org, TEST_LIMITS)
    await state.work.put("w1", b"a record")
    await state.nc.close()
    assert {i.config.num_replicas for i in (await org_streams(cluster, org)).values()} == {1}

    state = await open_state(cluster.url, org, R3)
    try:
        streams = await org_streams(cluster, org)
        assert {n: i.config.num_replicas for n, i in streams.items()} == dict.fromkeys(streams, 3)
        assert (await state.work.get("w1")).value == b"a record"
    finally:
        await state.nc.close()
    # A process without the setting leaves them as they are: it never shrinks what an administrator set.
    state = await open_state(cluster.url, org, TEST_LIMITS)
    await state.nc.close()
    assert {i.config.num_replicas for i in (await org_streams(cluster, org)).values()} == {3}


async def test_more_replicas_than_servers_is_refused_with_what_to_do(nats_url: str, org: str) -> None:
    nc = await connect(NatsSettings(url=nats_url))  # the session's single server
    try:
        with pytest.raises(StateLayoutError, match=rf"cannot be kept on 3 NATS servers.*{REPLICAS_ENV}"):
            await OrgState.open(nc, org, R3, create=True)
    finally:
        await nc.close()


async def test_an_r1_state_on_one_server_cannot_be_moved_and_says_so(nats_url: str, org: str) -> None:
    nc = await connect(NatsSettings(url=nats_url))
    try:
        await OrgState.open(nc, org, TEST_LIMITS, create=True)
        with pytest.raises(StateLayoutError, match=REPLICAS_ENV):
            await OrgState.open(nc, org, R3, create=True)
    finally:
        await nc.close()


def test_the_replicas_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLICAS_ENV, raising=False)
    assert StateLimits.from_env().replicas is None and StateLimits.from_env().create_replicas == 1
    monkeypatch.setenv(REPLICAS_ENV, "3")
    assert StateLimits.from_env(presence_ttl_s=2.0).replicas == 3
    assert StateLimits.from_env(replicas=1).replicas == 1
    for bad, says in (("three", "not a number"), ("0", "1 to 5"), ("7", "1 to 5")):
        monkeypatch.setenv(REPLICAS_ENV, bad)
        with pytest.raises(ValueError, match=says):
            StateLimits.from_env()


def test_a_url_may_name_every_member_of_a_cluster() -> None:
    assert server_list("nats://a:4222, nats://b:4222,,nats://c:4222") == \
        ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert NatsSettings(url="nats://a:1").servers == ["nats://a:1"]
    with pytest.raises(ValueError, match="no NATS server URL"):
        server_list(" , ")


async def test_a_client_given_every_url_works_through_any_member(cluster: EmbeddedCluster, org: str) -> None:
    for url in cluster.urls:
        nc = await connect(NatsSettings(url=url))
        try:
            state = await OrgState.open(nc, org, R3, create=True)
            await state.work.put(f"via-{url.rsplit(':', 1)[1]}", b"x")
        finally:
            await nc.close()
    nc = await connect(NatsSettings(url=cluster.url))
    try:
        state = await OrgState.open(nc, org, R3, create=False)
        assert len(await state.list("work")) == 3
    finally:
        await nc.close()

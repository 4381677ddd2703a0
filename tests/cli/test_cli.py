"""The CLI in client mode, from a separate process: nothing depends on another process's memory."""

from __future__ import annotations

import json

import yaml

from station_runtime.client import LatticeClient
from tests.support.cli import lattice
from tests.support.lattice import echo_agent, running_station
from tests.support.work import event_types


async def test_get_stations_and_agents_from_another_process(client: LatticeClient, nats_url: str,
                                                            org: str) -> None:
    await client.put_agent(echo_agent("echo", capabilities=["say"]))
    async with running_station(nats_url, org, "s1", labels={"zone": "a"}), \
            running_station(nats_url, org, "s2", labels={"zone": "b"}):
        await client.wait_for_stations(2, agent="echo", timeout_s=5)
        result = await lattice("--nats", nats_url, "--org", org, "get", "stations", "-o", "json")
        assert result.code == 0, result.stderr
        stations = json.loads(result.stdout)
        assert [s["station_id"] for s in stations] == ["s1", "s2"]
        assert stations[0]["agents"] == ["echo"] and stations[0]["schema"] == "lattice.station.record/v1"

        result = await lattice("--nats", nats_url, "--org", org, "get", "stations", "-l", "zone=b")
        assert result.code == 0 and "s2" in result.stdout and "s1" not in result.stdout
        assert "Ready" in result.stdout

        result = await lattice("--org", org, "get", "agents", "-o", "yaml", env={"LATTICE_NATS_URL": nats_url})
        assert result.code == 0, result.stderr
        agents = yaml.safe_load(result.stdout)
        assert agents[0]["name"] == "echo" and agents[0]["spec"]["capabilities"] == ["say"]

        result = await lattice("--nats", nats_url, "--org", org, "get", "agents")
        assert "echo" in result.stdout and "True" in result.stdout

        result = await lattice("--nats", nats_url, "--org", org, "status")
        assert result.code == 0 and "2 live / 2 registered" in result.stdout


async def test_invoke_from_another_process(client: LatticeClient, nats_url: str, org: str) -> None:
    await client.put_agent(echo_agent("echo", capabilities=["say"], prefix="got "))
    async with running_station(nats_url, org, "s1"):
        await client.wait_for_stations(1, agent="echo", timeout_s=5)
        result = await lattice("--nats", nats_url, "--org", org, "invoke", "echo", "hello")
        assert result.code == 0, result.stderr
        assert result.stdout.strip() == "got hello" and "echo on s1" in result.stderr

        result = await lattice("--nats", nats_url, "--org", org, "invoke", "--capability", "say", "--json",
                               '{"a": 1}', "-o", "json")
        assert result.code == 0, result.stderr
        assert json.loads(result.stdout)["output"] == {"a": 1}

        result = await lattice("--nats", nats_url, "--org", org, "invoke", "echo", "-", stdin=b"from stdin")
        assert result.stdout.strip() == "got from stdin"

        result = await lattice("--nats", nats_url, "--org", org, "invoke", "ghost", "x")
        assert result.code == 1 and "no live station" in result.stderr and "ghost" in result.stderr


async def test_bad_arguments_get_clear_errors(nats_url: str, org: str) -> None:
    result = await lattice("--nats", nats_url, "--org", "a.b", "get", "stations")
    assert result.code == 2 and "invalid org id 'a.b'" in result.stderr

    result = await lattice("--nats", nats_url, "--org", org, "invoke", "bad*agent", "x")
    assert result.code == 2 and "invalid agent name 'bad*agent'" in result.stderr

    result = await lattice("--nats", nats_url, "--org", org, "get", "stations", "-o", "xml")
    assert result.code == 2 and "'xml' is not one of" in result.stderr

    result = await lattice("--nats", nats_url, "--org", "nobody-here", "get", "stations")
    assert result.code == 1 and "has no lattice state" in result.stderr

    result = await lattice("--nats", "nats://127.0.0.1:1", "get", "stations")
    assert result.code == 1 and "cannot connect to NATS" in result.stderr and "lattice up" in result.stderr

    result = await lattice("--nats", nats_url, "--org", org, "invoke", "--json", "echo", "{not json")
    assert result.code == 2 and "not JSON" in result.stderr


async def test_apply_publishes_agents(client: LatticeClient, nats_url: str, org: str, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "agent.yaml"
    path.write_text("apiVersion: lattice.station.dev/v1alpha1\nkind: Agent\nmetadata: {name: greeter}\n"
                    "spec: {model: {provider: echo}}\n")
    result = await lattice("--nats", nats_url, "--org", org, "apply", "-f", str(path))
    assert result.code == 0 and "agent/greeter configured" in result.stdout
    assert [a.name for a in await client.agents()] == ["greeter"]

    path.write_text("apiVersion: lattice.station.dev/v1alpha1\nkind: Agent\nmetadata: {name: greeter}\n"
                    "spec: {model: {provider: python}}\n")
    result = await lattice("--nats", nats_url, "--org", org, "apply", "-f", str(path))
    assert result.code == 2 and "spec.model" in result.stderr and "agent.yaml[0]" in result.stderr


async def test_async_work_from_other_processes(client: LatticeClient, nats_url: str, org: str) -> None:
    """submit, work get/list/cancel and events, each a separate process reading KV and streams."""
    from station_runtime.api.models import WorkItemSpec

    await client.put_agent(echo_agent("echo", prefix="ok: "))
    await client.put_agent(echo_agent("slow", delaySeconds=30, steps=30))
    base = ("--nats", nats_url, "--org", org)
    async with running_station(nats_url, org, "s1"):
        await client.wait_for_stations(1, agent="echo", timeout_s=5)
        result = await lattice(*base, "submit", "echo", "hello", "--wait", "--id", "cli-job")
        assert result.code == 0, result.stderr
        assert result.stdout.strip() == "ok: hello"
        got = json.loads((await lattice(*base, "work", "get", "cli-job", "-o", "json")).stdout)
        assert got["phase"] == "Succeeded" and got["station_id"] == "s1" and got["result"] == "ok: hello"
        listed = await lattice(*base, "work", "list")
        assert "cli-job" in listed.stdout and "Succeeded" in listed.stdout
        slow = await client.submit(WorkItemSpec(agent="slow"), work_id="cli-slow")
        assert slow.station_id == "s1"
        cancelled = await lattice(*base, "work", "cancel", "cli-slow")
        assert cancelled.code == 0 and "cancelled" in cancelled.stdout
        await event_types(client, "cli-job")  # the last event trails the record by a moment
        events = await lattice(*base, "events", "--work", "cli-job", "-o", "json")
        types = [json.loads(line)["type"] for line in events.stdout.splitlines()]
        assert types == ["dev.lattice.work.submitted", "dev.lattice.work.succeeded"]
        filtered = await lattice(*base, "events", "--type", "work.cancelled")
        assert "cli-slow" in filtered.stdout and "cli-job" not in filtered.stdout
    missing = await lattice(*base, "work", "get", "nope")
    assert missing.code == 1 and "no work 'nope'" in missing.stderr

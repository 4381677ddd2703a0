"""``lattice up``: starts NATS and stations from manifests, restarts a killed station with the same id, and
stops everything it started."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from station_runtime.api.loader import load_manifests
from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import StationRecord, WorkPhase
from station_runtime.contract.subjects import bucket, kv_key, station_inbox_prefix
from station_runtime.errors import LatticeError
from station_runtime.local.auth import admin_creds_path
from station_runtime.local.controller import LocalLattice, port_free
from station_runtime.natsio.connect import NatsSettings
from station_runtime.natsio.embedded import EmbeddedNats
from station_runtime.station.creds import expires_at
from tests.support.waiting import eventually, wait_sync

MANIFESTS = """\
apiVersion: lattice.station.dev/v1alpha1
kind: Station
metadata: {name: worker}
spec: {replicas: 2, maxConcurrency: 2}
---
apiVersion: lattice.station.dev/v1alpha1
kind: Agent
metadata: {name: echo}
spec: {model: {provider: echo}}
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Up:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        (tmp / "manifests").mkdir()
        (tmp / "manifests" / "lattice.yaml").write_text(MANIFESTS)
        self.env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = open(tmp / "up.log", "wb")  # noqa: SIM115
        self.tmp = tmp
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station_runtime", "--org", "local", "up", "-f", str(tmp / "manifests"),
             "--state-dir", str(tmp / "lattice"), "--port", "0", "--heartbeat-interval", "0.5"],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env)

    def url(self) -> str:
        import json

        state = self.tmp / "state" / "station-lattice" / "current.json"
        return str(wait_sync(lambda: state.exists() and json.loads(state.read_text())["url"], timeout_s=30,
                             what=f"lattice up to write {state} (log: {self.output()})"))

    def settings(self) -> NatsSettings:
        """How a client of the org connects: the URL and the admin creds `lattice up` made in its state dir."""
        return NatsSettings(url=self.url(), creds_file=admin_creds_path(self.tmp / "lattice", "local"))

    def output(self) -> str:
        return (self.tmp / "up.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path)
    yield u
    u.stop()


async def live_stations(settings: NatsSettings, count: int) -> list[StationRecord]:
    async with LatticeClient(settings, "local") as client:
        return await client.wait_for_stations(count, agent="echo", timeout_s=30)


def nats_pid(up: Up) -> int:
    pids = list((up.tmp / "lattice" / "nats" / "ports").glob("*.ports"))
    return int(pids[0].stem.rsplit("_", 1)[1])


@pytest.mark.timeout(90)
async def test_up_restarts_a_killed_station_with_the_same_id_and_stops_cleanly(up: Up) -> None:
    records = await live_stations(up.settings(), 2)
    assert sorted(r.station_id for r in records) == ["worker-0", "worker-1"]
    victim = next(r for r in records if r.station_id == "worker-0")
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)

    async def restarted() -> StationRecord | None:
        async with LatticeClient(up.settings(), "local") as client:
            return next((r for r in await client.stations()
                         if r.station_id == "worker-0" and r.pid != victim.pid), None)

    again = await eventually(restarted, timeout_s=30, what="worker-0 to come back under a new pid")
    assert again.pid and alive(again.pid)
    async with LatticeClient(up.settings(), "local") as client:
        assert (await client.invoke("after restart", agent="echo", station="worker-0", timeout_s=5)).output \
            == "after restart"

    children = [r.pid for r in await live_stations(up.settings(), 2) if r.pid] + [nats_pid(up)]
    up.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(up.proc.wait, 30) == 0, up.output()
    assert not [pid for pid in children if alive(pid)], f"orphans left: {up.output()}"
    assert "exited with code -9" in up.output()
    assert not (up.tmp / "state" / "station-lattice" / "current.json").exists()


@pytest.mark.timeout(60)
async def test_killing_up_itself_takes_its_children_down(up: Up) -> None:
    children = [r.pid for r in await live_stations(up.settings(), 2) if r.pid] + [nats_pid(up)]
    up.proc.kill()
    up.proc.wait()
    await eventually(lambda: _none_alive(children), timeout_s=10, what="stations and nats-server to exit")


async def _none_alive(pids: list[int]) -> bool:
    return not any(alive(p) for p in pids)


async def test_up_refuses_bad_manifests_with_the_location(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: lattice.station.dev/v1alpha1\nkind: Station\n"
                                       "metadata: {name: w}\nspec: {replicas: many}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "station_runtime", "up", "-f", str(tmp_path), stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"})
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "bad.yaml[0] spec.replicas" in err.decode()


@pytest.mark.timeout(120)
async def test_a_killed_nats_server_comes_back_on_its_port_and_the_lattice_carries_on(up: Up) -> None:
    """SIGKILL of the embedded nats-server: `lattice up` restarts it with the same store on the same port; the
    stations (not restarted) reconnect, work from before is still there, new work runs, `lattice up` runs on."""
    url = up.url()
    before = {r.station_id: r.pid for r in await live_stations(up.settings(), 2)}
    async with LatticeClient(up.settings(), "local") as client:
        first = await client.submit(WorkItemSpec(agent="echo", input="before"), watch=True)
        assert (await client.wait_work(first.work_id, timeout_s=10)).phase == WorkPhase.SUCCEEDED
    old = nats_pid(up)
    os.kill(old, signal.SIGKILL)

    def restarted() -> int | None:
        try:
            pid = nats_pid(up)
        except (IndexError, ValueError):
            return None
        return pid if pid != old and alive(pid) else None

    await asyncio.to_thread(wait_sync, restarted, timeout_s=30, what=f"nats-server to be restarted ({up.output()})")
    assert up.proc.poll() is None, up.output()
    assert up.url() == url  # the same port: clients waiting there get their outcome
    async with LatticeClient(up.settings(), "local") as client:
        again = await client.wait_for_stations(2, agent="echo", timeout_s=30)
        assert {r.station_id: r.pid for r in again} == before  # the stations kept running and reconnected
        assert (await client.get_work(first.work_id)).phase == WorkPhase.SUCCEEDED  # type: ignore[union-attr]
        second = await client.submit(WorkItemSpec(agent="echo", input="after"), watch=True)
        assert (await client.wait_work(second.work_id, timeout_s=10)).result == "after"
    assert "nats-server exited unexpectedly" in up.output() and "nats-server restarted on" in up.output()
    up.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(up.proc.wait, 30) == 0, up.output()


async def test_up_keeps_the_port_it_was_given_or_fails_saying_so(tmp_path: Path) -> None:
    (tmp_path / "lattice.yaml").write_text(MANIFESTS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "station_runtime", "up", "-f", str(tmp_path), "--state-dir", str(tmp_path / "s"),
            "--port", str(port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, out.decode()
    assert f"port {port} is in use" in err.decode() and "--port" in err.decode()


def test_a_port_left_in_time_wait_is_free_for_a_server() -> None:
    """A server that just died leaves its port in TIME_WAIT for about a minute: a plain bind says "in use" (what
    made `lattice up` move NATS to a random port), a server's bind with SO_REUSEADDR succeeds."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end of the connection stays in TIME_WAIT
        client.recv(1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    assert port_free(port)


@pytest.mark.timeout(90)
@pytest.mark.security
async def test_an_embedded_lattice_admits_only_holders_of_its_creds(up: Up) -> None:
    """`lattice up` runs NATS in operator mode: no creds, no connection; a station's own creds allow what a
    station does and no more; the keys and creds are readable by their user only; the CLI finds the admin creds
    by itself (through the discovery file)."""
    settings = up.settings()
    await live_stations(settings, 2)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(settings.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)

    auth = up.tmp / "lattice" / "auth"
    station_creds = auth / "local" / "stations" / "worker-0.creds"
    for path in (auth, auth / "local", auth / "local" / "stations"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (auth / "operator.json", auth / "accounts" / "local.json", auth / "local" / "admin.creds",
                 station_creds):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    # A station's creds: it reads the org's work, but may not write an agent nor take the admin's replies.
    denied: list[str] = []

    async def on_error(exc: Exception) -> None:  # permission violations arrive asynchronously
        denied.append(str(exc).lower())

    nc = await nats.connect(settings.url, user_credentials=str(station_creds), allow_reconnect=False,
                            inbox_prefix=station_inbox_prefix("worker-0"), error_cb=on_error)
    try:
        await nc.publish(kv_key(bucket("local", "agents"), "echo"), b"forged")
        await nc.subscribe("_INBOX.>")
        await nc.flush()
        await eventually(lambda: _both_denied(denied), timeout_s=10, what=f"both violations (got {denied})")
    finally:
        await nc.close()
    async with LatticeClient(settings, "local") as client:
        assert [a.name for a in await client.agents()] == ["echo"]

    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "station_runtime", "get", "stations"],
                                   capture_output=True, text=True, env=up.env, timeout=60)
    assert done.returncode == 0 and "worker-0" in done.stdout, done.stderr


async def _both_denied(denied: list[str]) -> bool:
    said = " ".join(denied)
    return "violation for publish to" in said and "violation for subscription to" in said


@pytest.mark.timeout(90)
async def test_state_from_an_unauthenticated_lattice_is_kept_on_the_first_authenticated_start(
        tmp_path: Path) -> None:
    """A state dir written before embedded auth (streams in the server's global account): the first `lattice up`
    with auth moves the org's streams into the org's account, so the work stored before is still there."""
    state = tmp_path / "lattice"
    async with EmbeddedNats(state / "nats", sync_always=False) as server, \
            LatticeClient(NatsSettings(url=server.url), "local", create_state=True) as client:
        await client.submit(WorkItemSpec(agent="echo", input="from before"), work_id="old-work")
    up = Up(tmp_path)
    try:
        async with LatticeClient(up.settings(), "local") as client:
            record = await client.get_work("old-work")
            assert record is not None and record.spec.input == "from before"
        assert "moved into its account" in up.output()
    finally:
        up.stop()


def test_up_refuses_a_manifest_of_another_org_saying_how_to_run_it(tmp_path: Path) -> None:
    (tmp_path / "lattice.yaml").write_text(MANIFESTS.replace("metadata: {name: echo}\nspec: {",
                                                             "metadata: {name: echo}\nspec: {org: other, "))
    lattice = LocalLattice(load_manifests(tmp_path), org="local", state_dir=tmp_path / "s")
    with pytest.raises(LatticeError, match=r"Agent echo is for org 'other'.*lattice up --org other"):
        lattice._check_one_org()


@pytest.mark.timeout(120)
async def test_stations_move_to_renewed_creds_before_theirs_end(tmp_path: Path) -> None:
    """Station creds that last 12 s, renewed every 4 s in place: once the first ones and the next have ended, the
    same station processes (no restart: nats-py would have closed an expired connection for good) still run
    work."""
    up = Up(tmp_path, {"LATTICE_STATION_CREDS_TTL": "12"})
    try:
        before = {r.station_id: r.pid for r in await live_stations(up.settings(), 2)}
        logs = [tmp_path / "lattice" / "logs" / f"worker-{i}.log" for i in range(2)]

        async def renewed_four_times() -> bool:
            return all(log.read_text(errors="replace").count("renewed (valid until") >= 4 for log in logs)

        await eventually(renewed_four_times, timeout_s=60, what=f"four renewals in each station's log ({logs})")
        creds = (tmp_path / "lattice" / "auth" / "local" / "stations" / "worker-0.creds").read_text()
        end = expires_at(creds)
        assert end is not None and end - time.time() <= 12
        async with LatticeClient(up.settings(), "local") as client:
            now = {r.station_id: r.pid for r in await client.wait_for_stations(2, agent="echo", timeout_s=10)}
            assert now == before
            for station in before:
                assert (await client.invoke("still here", agent="echo", station=station, timeout_s=5)).output \
                    == "still here"
    finally:
        up.stop()

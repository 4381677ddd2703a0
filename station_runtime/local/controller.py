"""The local controller behind ``lattice up``: the Kubernetes operator's job, done with child processes.

* starts an embedded nats-server (unless given a URL) and opens the org's state; restarts that server with the
  same configuration, store and port if it dies (everyone reconnects by themselves);
* publishes the Agent manifests to the agents bucket;
* runs ``replicas`` station processes per Station manifest with stable ids ``{name}-{i}``, and restarts a
  crashed one with the same id (so that it resumes its own work), with backoff if it keeps crashing;
* on stop: SIGTERM every station (they drain), SIGKILL what is left after the drain timeout, stop NATS.
  Children also get SIGTERM from the kernel if this process dies (PR_SET_PDEATHSIG): no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..api.loader import ManifestSet
from ..api.models import Station as StationManifest
from ..backoff import compute_backoff
from ..client import LatticeClient
from ..contract.subjects import station_inbox_prefix
from ..errors import LatticeError
from ..natsio.connect import NatsSettings
from ..natsio.embedded import EmbeddedNats, NatsServerError
from ..natsio.procutil import die_with_parent, tail
from ..tasks import stop_task
from ..work.controller import WorkController
from ..work.policy import WitnessPolicy
from .auth import AUTH_DIR, LocalAuth, adopt_open_state, creds_lifetime_s

log = logging.getLogger(__name__)

#: A station that ran this long before crashing is restarted at once; a crash loop backs off.
STABLE_AFTER_S = 30.0


@dataclass
class StationProcess:
    station_id: str
    org: str
    argv: list[str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    crashes_in_a_row: int = 0
    #: Set by a deliberate kill that should not be undone (the demo's fault injection).
    keep_down: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def station_argv(manifest: StationManifest, index: int, org: str, *, heartbeat_s: float,
                 drain_timeout_s: float) -> tuple[str, list[str]]:
    """Pure: the command line of replica ``index`` of a Station manifest."""
    spec = manifest.spec
    station_id = f"{manifest.name}-{index}"
    argv = [sys.executable, "-m", "station_runtime", "--org", org, "station", "run", "--station-id", station_id,
            "--max-concurrency", str(spec.max_concurrency), "--heartbeat-interval", str(heartbeat_s),
            "--drain-timeout", str(drain_timeout_s)]
    for cap in spec.capabilities:
        argv += ["--capability", cap]
    for key, value in spec.labels.items():
        argv += ["--label", f"{key}={value}"]
    if spec.agent_selector is not None:
        argv += ["--agent-selector-json", spec.agent_selector.model_dump_json(by_alias=True)]
    return station_id, argv


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a server listen on ``port``? Checked as servers bind, with ``SO_REUSEADDR``: without it, sockets of a
    server that just died (TIME_WAIT, for about a minute) would make its own port look taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortInUse(LatticeError):
    """The NATS port the user asked for is taken by another process."""


class LocalLattice:
    def __init__(self, manifests: ManifestSet, *, org: str, state_dir: Path, nats_url: str | None = None,
                 nats: NatsSettings | None = None, port: int = 4222, port_required: bool = False,
                 sync_always: bool = True, heartbeat_s: float = 2.0, drain_timeout_s: float = 10.0,
                 policy: WitnessPolicy | None = None, witness_interval_s: float = 1.0,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.manifests = manifests
        self.org = org
        self.state_dir = state_dir
        self.nats_url = nats_url
        self.nats_settings = nats
        #: -1: any free port. With ``port_required`` the port is kept or start() fails; without, a taken port
        #: makes NATS take a free one, and say so.
        self.port = port
        self.port_required = port_required
        self.sync_always = sync_always
        self.heartbeat_s = heartbeat_s
        self.drain_timeout_s = drain_timeout_s
        self.on_event = on_event or (lambda m: log.info("%s", m))
        self.server: EmbeddedNats | None = None
        #: The embedded server's keys and creds (None with a NATS URL of the user's: its auth is theirs).
        self.auth: LocalAuth | None = None
        self.client: LatticeClient | None = None
        self.controller: WorkController | None = None
        self.policy = policy or WitnessPolicy()
        self.witness_interval_s = witness_interval_s
        self.stations: dict[str, StationProcess] = {}
        #: How long stations' creds last (embedded auth), and how often they were renewed.
        self.creds_lifetime_s = creds_lifetime_s()
        self.creds_renewals = 0
        self._renewer: asyncio.Task[None] | None = None
        #: Times the embedded nats-server was restarted after it died.
        self.nats_restarts = 0
        self._stopping = False

    @property
    def url(self) -> str:
        return self.nats_url or (self.server.url if self.server else "")

    def _pick_port(self) -> int:
        if self.port <= 0 or port_free(self.port):
            return self.port
        if self.port_required:
            raise PortInUse(f"port {self.port} is in use by another process: stop it, or choose another --port "
                            "(or leave --port out and NATS takes a free one)")
        self.on_event(f"port {self.port} is in use; NATS takes a free port (pass --port to insist on one)")
        return -1

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        settings = self.nats_settings or NatsSettings()
        if self.nats_url is None:
            self._check_one_org()
            await self._start_nats()
            assert self.auth is not None
            settings = dataclasses.replace(settings, creds_file=self.auth.admin_creds(self.org), token=None,
                                           nkey_seed_file=None, inbox_prefix=None)
        settings = dataclasses.replace(settings, url=self.url, name="lattice-up")
        self.nats_settings = settings
        # One runtime for the org: the client publishes the agents and places work, and the controller witnesses
        # with the client's own connection, directory and auctioneer.
        self.client = LatticeClient(settings, self.org, create_state=True, policy=self.policy, source="lattice-up")
        await self.client.connect()
        await self.client.state()
        for server in self.manifests.tool_servers:
            await self.client.put_tool_server(server)
            self.on_event(f"toolserver {server.name} stored ({server.spec.transport})")
        for agent in self.manifests.agents:
            await self.client.put_agent(agent, org=agent.spec.org or self.org)
            self.on_event(f"agent {agent.name} published ({agent.spec.model.provider})")
        self.controller = WorkController(await self.client.org_work(), interval_s=self.witness_interval_s)
        await self.controller.start()
        for manifest in self.manifests.stations:
            org = manifest.spec.org or self.org
            for index in range(manifest.spec.replicas):
                station_id, argv = station_argv(manifest, index, org, heartbeat_s=self.heartbeat_s,
                                                drain_timeout_s=self.drain_timeout_s)
                sp = StationProcess(station_id, org, argv, self.state_dir / "logs" / f"{station_id}.log")
                self.stations[station_id] = sp
                await self._spawn(sp)
        if self.auth is not None:
            self._renewer = asyncio.create_task(self._renew_creds(), name="creds-renewal")

    def _creds_end(self) -> int:
        return int(time.time() + self.creds_lifetime_s)

    async def _renew_creds(self) -> None:
        """Every third of the creds' lifetime, every station gets new ones (written in place: it reconnects with
        them; the old ones run out by themselves)."""
        while True:
            await asyncio.sleep(self.creds_lifetime_s / 3)
            assert self.auth is not None
            for sp in self.stations.values():
                self.auth.station_creds(sp.org, sp.station_id, expires_at=self._creds_end())
            self.creds_renewals += 1

    def _check_one_org(self) -> None:
        """The embedded server holds one account, the org's: a manifest for another org cannot be served by it."""
        named = [("Station", m.name, m.spec.org) for m in self.manifests.stations]
        named += [("Agent", m.name, m.spec.org) for m in self.manifests.agents]
        for kind, name, org in named:
            if org not in (None, self.org):
                raise LatticeError(f"{kind} {name} is for org {org!r}, but this lattice runs org {self.org!r} (each "
                                   f"org is its own NATS account): start `lattice up --org {org}` with its own "
                                   "--state-dir for it, or drop spec.org")

    async def _start_nats(self) -> None:
        """The embedded server in operator mode, with the org's account in it (and its earlier unauthenticated
        state moved into that account)."""
        self.auth = LocalAuth.open(self.state_dir / AUTH_DIR)
        store = self.state_dir / "nats"
        account = self.auth.account_key(self.org).public_key
        if moved := adopt_open_state(store / "js" / "jetstream", self.org, account):
            self.on_event(f"state of org {self.org} from an unauthenticated lattice moved into its account "
                          f"({len(moved)} streams)")
        self.server = EmbeddedNats(store, port=self._pick_port(), sync_always=self.sync_always,
                                   extra_config=self.auth.server_config())
        await self.server.start()
        await self.auth.provision(self.server.url, self.org)
        self.on_event(f"nats-server {self.server.url} (JetStream in {store}, log {self.server.log_path}; "
                      f"loopback only, creds in {self.auth.root})")

    def _child_env(self, sp: StationProcess) -> dict[str, str]:
        assert self.nats_settings is not None
        settings = self.nats_settings
        if self.auth is not None:
            # Its own least-privilege user, made afresh at each (re)start, replying only into its own inboxes;
            # its creds end, and are renewed in place before they do (_renew_creds).
            creds = self.auth.station_creds(sp.org, sp.station_id, expires_at=self._creds_end())
            settings = dataclasses.replace(settings, creds_file=creds, inbox_prefix=station_inbox_prefix(sp.station_id))
        env = {**os.environ, **settings.to_env()}
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def _spawn(self, sp: StationProcess) -> None:
        with open(sp.log_path, "ab") as logf:
            sp.proc = await asyncio.create_subprocess_exec(
                *sp.argv, stdout=logf, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=self._child_env(sp), preexec_fn=die_with_parent(), start_new_session=True)
        sp.started_at = time.monotonic()
        sp.watcher = asyncio.create_task(self._watch(sp), name=f"watch-{sp.station_id}")
        self.on_event(f"station {sp.station_id} started (pid {sp.proc.pid}, log {sp.log_path})")

    async def _watch(self, sp: StationProcess) -> None:
        assert sp.proc is not None
        code = await sp.proc.wait()
        if self._stopping or sp.keep_down:
            if sp.keep_down:
                self.on_event(f"station {sp.station_id} killed (exit {code}); not restarting it")
            return
        ran_for = time.monotonic() - sp.started_at
        sp.crashes_in_a_row = 0 if ran_for > STABLE_AFTER_S else sp.crashes_in_a_row + 1
        delay = 0.0 if sp.crashes_in_a_row <= 1 else compute_backoff(sp.crashes_in_a_row - 2, base_s=0.5,
                                                                      max_s=15.0)
        last = tail(str(sp.log_path), 3).replace("\n", " | ")
        self.on_event(f"station {sp.station_id} exited with code {code} after {ran_for:.1f}s; restarting"
                      f"{f' in {delay:.1f}s' if delay else ''} (last log: {last})")
        if delay:
            await asyncio.sleep(delay)
        if not self._stopping:
            sp.restarts += 1
            await self._spawn(sp)

    async def run_until(self, stop: asyncio.Event) -> int:
        """Supervise until ``stop`` is set. An embedded nats-server that dies is restarted with the same
        configuration, store and port (stations, the controller and clients reconnect by themselves), with backoff
        while it keeps failing; the stations keep running meanwhile."""
        if self.server is None:
            await stop.wait()
            return 0
        stopped = asyncio.create_task(stop.wait())
        try:
            while True:
                exited = asyncio.create_task(self.server.wait_exit())
                await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    exited.cancel()
                    return 0
                await self._restart_nats(exited.result(), stop)
                if stop.is_set():
                    return 0
        finally:
            stopped.cancel()

    async def _restart_nats(self, code: int, stop: asyncio.Event) -> None:
        assert self.server is not None
        self.on_event(f"nats-server exited unexpectedly (code {code}); restarting it on {self.server.url} with "
                      f"the same store. Its log ({self.server.log_path}) ends with:\n{self.server.last_log_lines(5)}")
        failures = 0
        while not stop.is_set():
            try:
                await self.server.start()
            except NatsServerError as exc:
                failures += 1
                delay = compute_backoff(failures - 1, base_s=0.5, max_s=15.0)
                self.on_event(f"nats-server did not start again ({exc}); retrying in {delay:.1f}s")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                continue
            self.nats_restarts += 1
            self.on_event(f"nats-server restarted on {self.server.url} (restart {self.nats_restarts})")
            return

    async def kill_station(self, station_id: str, *, restart: bool = True) -> int:
        """SIGKILL a station (fault injection for the demo and tests); the supervisor restarts it unless told
        not to."""
        sp = self.stations[station_id]
        assert sp.proc is not None
        sp.keep_down = not restart
        pid = sp.proc.pid
        sp.proc.send_signal(signal.SIGKILL)
        return pid

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._renewer)
        if self.controller is not None:
            # First, so that work the stations hand back on drain waits in KV for the next `lattice up` instead of
            # being re-auctioned among stations that are all stopping (a single draining station's work is
            # rescheduled at once: the controller is running then).
            await self.controller.stop()
            self.controller = None
        procs = [sp for sp in self.stations.values() if sp.alive]
        for sp in procs:
            with contextlib.suppress(ProcessLookupError):
                assert sp.proc is not None
                sp.proc.send_signal(signal.SIGTERM)
        if procs:
            self.on_event(f"stopping {len(procs)} station(s) (drain up to {self.drain_timeout_s:.0f}s)")
            waits = [asyncio.wait_for(sp.proc.wait(), self.drain_timeout_s + 5) for sp in procs if sp.proc]
            results = await asyncio.gather(*waits, return_exceptions=True)
            for sp, result in zip(procs, results, strict=True):
                if isinstance(result, BaseException) and sp.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        sp.proc.kill()
                    await sp.proc.wait()
        for sp in self.stations.values():
            if sp.watcher is not None:
                sp.watcher.cancel()
        if self.client is not None:
            await self.client.close()
        if self.server is not None:
            await self.server.stop()
            self.on_event("nats-server stopped")

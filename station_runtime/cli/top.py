"""``lattice top``: a live view of one org (stations, agents, the queue, rates, the slowest work, recent events),
from the same watches a controller follows; client mode, on any lattice. What it shows is :mod:`.top_view`.

Keys need a terminal; with ``--once`` (or no terminal) it prints one frame and exits, for scripts. When NATS goes
away the view says so, keeps its last data, and carries on by itself once NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.live import Live

from ..client import LatticeClient
from ..contract.events import CloudEvent
from ..contract.messages import AgentDefinition, WorkPhase, utcnow
from ..natsio.retry import NATS_FAILURES
from ..tasks import stop_task
from ..work.index import WorkIndex
from ..work.store import Versioned
from .common import Globals, console, run
from .top_view import SHOWN_EVENTS, Options, Rates, Snapshot, apply_key, render

log = logging.getLogger(__name__)
#: Agents are read from their bucket this often (they change rarely; stations and work are watched).
AGENTS_EVERY_S = 5.0
#: Work ids whose last phase is remembered for the rates; past it the memory starts again (a rate blips).
MAX_TRACKED = 100_000


def register(app: typer.Typer) -> None:
    app.command()(top)


def top(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.1, max=60, help="Seconds between redraws.")] = 0.5,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit (no keys, no full screen).")] = False,
) -> None:
    """A live view of the org: stations, agents, queue depth, rates per phase, the slowest work, recent events.
    Keys: s sorts stations, w sorts work, / filters, Esc clears the filter, q quits."""
    g: Globals = ctx.obj
    run(_top(g, interval, once or not sys.stdin.isatty()))


class Feed:
    """The snapshot ``lattice top`` draws, kept current: the station directory and a work index (both watches),
    the org's events, its agents, and the connection's state."""

    def __init__(self, client: LatticeClient, org: str, url: str) -> None:
        self.client = client
        self.snapshot = Snapshot(org=org, url=url)
        self.rates = Rates()
        self.events: deque[CloudEvent] = deque(maxlen=SHOWN_EVENTS)
        self.agents: list[AgentDefinition] = []
        self._phases: dict[str, WorkPhase] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.index: WorkIndex | None = None

    async def start(self, *, follow: bool = True) -> None:
        """Open the watches; ``follow``: keep the events and agents current (a one-frame view reads them once)."""
        client = self.client
        state = await client.state()
        self.directory = await client.directory()
        index = self.index = WorkIndex(state, client.policy)
        index.wanted = lambda _: True  # finished records too: they are what the rates count
        index.listeners.append(self._seen)
        await index.start()
        client.on_reconnect(index.rewatch)
        self.agents = await client.agents()
        if not follow:
            with contextlib.suppress(*NATS_FAILURES):
                async for event in client.events(recent=SHOWN_EVENTS):
                    self.events.append(event)
            return
        self._tasks = [asyncio.create_task(self._follow_events(), name="top-events"),
                       asyncio.create_task(self._poll_agents(), name="top-agents")]

    async def stop(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        if self.index is not None:
            await self.index.stop()

    def _seen(self, versioned: Versioned) -> None:
        assert self.index is not None
        if not self.index.healthy:
            return  # a snapshot (the first, or a rewatch's after NATS came back) is the past: not a rate
        record = versioned.record
        if self._phases.get(record.work_id) != record.phase:
            self.rates.add(record.phase)
        if record.phase.terminal:
            self._phases.pop(record.work_id, None)
        else:
            if len(self._phases) >= MAX_TRACKED:
                self._phases.clear()
            self._phases[record.work_id] = record.phase

    async def _follow_events(self) -> None:
        while True:
            try:
                async for event in self.client.events(follow=True, recent=SHOWN_EVENTS):
                    self.events.append(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, the stream not there yet: try again shortly
                log.debug("top: events: %s", exc)
            await asyncio.sleep(1.0)

    async def _poll_agents(self) -> None:
        while True:
            await asyncio.sleep(AGENTS_EVERY_S)
            with contextlib.suppress(*NATS_FAILURES, Exception):
                self.agents = await self.client.agents()

    def refresh(self) -> Snapshot:
        snap = self.snapshot
        connected = self.client.connection().is_connected
        if connected != snap.connected:
            if connected:
                snap.reconnects += 1
            snap.lost_at = None if connected else utcnow()
        snap.connected = connected
        snap.stations = list(self.directory.records.values())
        snap.agents = list(self.agents)
        assert self.index is not None
        snap.work = [v.record for v in list(self.index.live.values())]
        snap.rates = self.rates.per_second()
        snap.events = tuple(self.events)
        return snap


@contextlib.contextmanager
def keys_from_terminal(on_key: Any) -> Iterator[None]:
    """Single keys from the terminal as they are pressed (cbreak mode, restored after), fed to ``on_key``."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        with contextlib.suppress(OSError):
            for key in os.read(fd, 64).decode(errors="ignore"):
                on_key(key)

    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _top(g: Globals, interval: float, once: bool) -> None:
    async with LatticeClient(g.nats, g.org) as client:
        feed = Feed(client, g.org, g.nats.describe())
        await feed.start(follow=not once)
        try:
            if once:
                console.print(render(feed.refresh(), Options(), utcnow()))
                return
            options = Options()
            pressed = asyncio.Event()

            def on_key(key: str) -> None:
                nonlocal options
                options = apply_key(options, key)
                pressed.set()

            with keys_from_terminal(on_key), Live(console=console, screen=True, auto_refresh=False) as live:
                while not options.quit:
                    live.update(render(feed.refresh(), options, utcnow()), refresh=True)
                    pressed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await pressed.wait()
        finally:
            await feed.stop()

"""Pure parts of ``lattice top``: what the screen shows, from a snapshot of the lattice, and what each key does.

The command (:mod:`.top`) keeps the snapshot current from watches; everything here is data in, renderable out, so
that a test renders a frame without a terminal.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..contract.events import CloudEvent
from ..contract.messages import AgentDefinition, StationRecord, WorkPhase, WorkRecord
from ..routing import is_live
from .render import age, cells, phase_text, station_state, work_target

#: Seconds of history behind the rates per second.
RATE_WINDOW_S: Final = 10.0
#: At most this many phase changes remembered for the rates (a burst beyond it is counted as the window's rate).
MAX_RATE_SAMPLES: Final = 100_000
STATION_SORTS: Final = ("id", "load", "heartbeat")
WORK_SORTS: Final = ("longest", "newest")
UNFINISHED: Final = tuple(p for p in WorkPhase if not p.terminal)
SHOWN_WORK: Final = 10
SHOWN_EVENTS: Final = 8


class Rates:
    """Phase changes per second over the last :data:`RATE_WINDOW_S`, by the phase entered. Bounded."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._seen: deque[tuple[float, WorkPhase]] = deque(maxlen=MAX_RATE_SAMPLES)
        self.started = time.monotonic()

    def add(self, phase: WorkPhase, now: float | None = None) -> None:
        self._seen.append((time.monotonic() if now is None else now, phase))

    def per_second(self, now: float | None = None) -> dict[WorkPhase, float]:
        now = time.monotonic() if now is None else now
        while self._seen and self._seen[0][0] < now - self.window_s:
            self._seen.popleft()
        # Until a whole window has passed, divide by the time watched so far (else the first seconds read low).
        span = max(min(self.window_s, now - self.started), 1.0)
        counts: dict[WorkPhase, float] = {}
        for _, phase in self._seen:
            counts[phase] = counts.get(phase, 0) + 1
        return {p: n / span for p, n in counts.items()}


@dataclass(frozen=True)
class Options:
    """What the user chose with keys: the sort of each table and a filter (a substring of a station id, an agent
    name or a work id)."""

    station_sort: str = "id"
    work_sort: str = "longest"
    filter: str = ""
    #: Typing a filter after "/" (Enter keeps it, Esc drops it).
    typing: bool = False
    quit: bool = False


def apply_key(options: Options, key: str) -> Options:
    """Pure: the options after one key press."""
    if options.typing:
        if key in ("\r", "\n"):
            return dataclasses.replace(options, typing=False)
        if key == "\x1b":
            return dataclasses.replace(options, typing=False, filter="")
        if key in ("\x7f", "\b"):
            return dataclasses.replace(options, filter=options.filter[:-1])
        if key.isprintable() and len(options.filter) < 64:
            return dataclasses.replace(options, filter=options.filter + key)
        return options
    if key in ("q", "Q", "\x03"):
        return dataclasses.replace(options, quit=True)
    if key == "s":
        return dataclasses.replace(options, station_sort=_next(STATION_SORTS, options.station_sort))
    if key == "w":
        return dataclasses.replace(options, work_sort=_next(WORK_SORTS, options.work_sort))
    if key == "/":
        return dataclasses.replace(options, typing=True, filter="")
    if key == "\x1b":
        return dataclasses.replace(options, filter="")
    return options


def _next(choices: Sequence[str], current: str) -> str:
    return choices[(choices.index(current) + 1) % len(choices)] if current in choices else choices[0]


@dataclass
class Snapshot:
    """What ``lattice top`` knows of the lattice right now."""

    org: str
    url: str
    stations: list[StationRecord] = field(default_factory=list)
    agents: list[AgentDefinition] = field(default_factory=list)
    #: Unfinished work (the index's live records).
    work: list[WorkRecord] = field(default_factory=list)
    rates: dict[WorkPhase, float] = field(default_factory=dict)
    events: Sequence[CloudEvent] = ()
    connected: bool = True
    #: When the connection went away (None while connected), and how often it came back since start.
    lost_at: datetime | None = None
    reconnects: int = 0


def render(snap: Snapshot, options: Options, now: datetime) -> RenderableType:
    parts: list[RenderableType] = [_header(snap, options, now)]
    if not snap.connected:
        lost = age(snap.lost_at, now) if snap.lost_at else "?"
        parts.append(Panel(Text(f"NATS at {snap.url} is unreachable ({lost}): retrying every half second. What "
                                "follows is as it was when it went away.", style="bold white"),
                           style="red", title="disconnected", title_align="left"))
    wanted = options.filter.lower()
    parts += [_stations(snap, options, now, wanted), _work(snap, options, now, wanted), _events(snap, now, wanted)]
    return Group(*parts)


def _header(snap: Snapshot, options: Options, now: datetime) -> RenderableType:
    live = [s for s in snap.stations if is_live(s, now)]
    depth = {p: 0 for p in UNFINISHED}
    for r in snap.work:
        depth[r.phase] = depth.get(r.phase, 0) + 1
    waiting = depth[WorkPhase.PENDING] + depth[WorkPhase.SCHEDULING] + depth[WorkPhase.UNSCHEDULABLE]
    load = sum(s.load for s in live)
    capacity = sum(s.capacity for s in live)
    line = Text.assemble(("lattice top", "bold"), f"  org {snap.org}  ",
                         ("connected" if snap.connected else "DISCONNECTED", "green" if snap.connected else "bold red"),
                         f"  {now.strftime('%H:%M:%S')}  stations {len(live)}/{len(snap.stations)} live, "
                         f"load {load}/{capacity}, agents {len(snap.agents)}")
    queue = Text("queue  ", style="bold")
    queue.append(f"waiting {waiting}")
    for phase in UNFINISHED:
        queue.append(f"  {phase.value.lower()} {depth[phase]}")
    rate = Text("per s  ", style="bold")
    rate.append("  ".join(f"{p.value.lower()} {snap.rates.get(p, 0.0):.1f}"
                          for p in (WorkPhase.SCHEDULING, WorkPhase.RUNNING, WorkPhase.SUCCEEDED, WorkPhase.FAILED,
                                    WorkPhase.PENDING, WorkPhase.ESCALATED, WorkPhase.CANCELLED)))
    keys = Text("keys   s: sort stations (" + options.station_sort + ")  w: sort work (" + options.work_sort
                + ")  /: filter  esc: clear  q: quit", style="dim")
    if options.typing or options.filter:
        keys.append(f"   filter: {options.filter}{'_' if options.typing else ''}", style="bold yellow")
    return Group(line, queue, rate, keys)


def _stations(snap: Snapshot, options: Options, now: datetime, wanted: str) -> RenderableType:
    rows = [s for s in snap.stations if not wanted or wanted in s.station_id.lower()
            or any(wanted in a.lower() for a in s.agents)]
    key = {"id": lambda s: (s.station_id,), "load": lambda s: (-s.load / max(s.capacity, 1), s.station_id),
           "heartbeat": lambda s: (s.last_heartbeat, s.station_id)}[options.station_sort]
    table = Table(box=None, header_style="bold", title=Text(f"stations ({len(rows)})", style="bold"),
                  title_justify="left")
    for col in ("STATION", "STATE", "LOAD", "HEARTBEAT", "AGENTS", "AGE"):
        table.add_column(col)
    for s in sorted(rows, key=key):
        table.add_row(*cells([s.station_id, station_state(s, now), f"{s.load}/{s.capacity}",
                              age(s.last_heartbeat, now), ",".join(s.agents) or "-", age(s.started_at, now)]))
    return table


def _work(snap: Snapshot, options: Options, now: datetime, wanted: str) -> RenderableType:
    rows = [r for r in snap.work if not wanted or wanted in r.work_id.lower()
            or wanted in work_target(r).lower() or wanted in (r.station_id or "").lower()]
    if options.work_sort == "longest":  # the slowest first: running longest, then waiting longest
        rows.sort(key=lambda r: (r.phase not in (WorkPhase.RUNNING, WorkPhase.ASSIGNED),
                                 r.started_at or r.created_at))
    else:
        rows.sort(key=lambda r: r.created_at, reverse=True)
    table = Table(box=None, header_style="bold", title=Text(f"unfinished work ({len(rows)})", style="bold"),
                  title_justify="left")
    for col in ("WORK", "TARGET", "PHASE", "STATION", "RUNNING", "PROGRESS"):
        table.add_column(col)
    for r in rows[:SHOWN_WORK]:
        running = age(r.started_at, now) if r.started_at else "-"
        progress = r.progress_message[:40] or (f"{r.progress_percent:.0f}%" if r.progress_percent is not None
                                               else (r.reason[:40] if r.reason else "-"))
        table.add_row(*cells([r.work_id, work_target(r), phase_text(r.phase.value), r.station_id or "-", running,
                              progress]))
    if len(rows) > SHOWN_WORK:
        table.add_row(*cells([f"(+{len(rows) - SHOWN_WORK} more)", "", "", "", "", ""]))
    return table


def _events(snap: Snapshot, now: datetime, wanted: str) -> RenderableType:
    table = Table(box=None, header_style="bold", title=Text("recent events", style="bold"), title_justify="left")
    for col in ("AGO", "TYPE", "SUBJECT", "DETAIL"):
        table.add_column(col)
    shown = [e for e in snap.events if not wanted or wanted in (e.subject or "").lower() or wanted in e.short_type]
    for event in shown[-SHOWN_EVENTS:][::-1]:
        detail = " ".join(f"{k}={v}" for k, v in event.data.items() if v not in (None, "", [], {}))
        table.add_row(*cells([age(event.time, now), event.short_type, event.subject or "-", detail[:60]]))
    return table

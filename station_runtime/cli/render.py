"""Pure formatting: data -> rich renderables or text. The commands print what these return."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import yaml
from pydantic import BaseModel
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ..contract.events import CloudEvent
from ..contract.messages import (
    AgentDefinition,
    HumanDecision,
    InvokeResult,
    JournalEntry,
    StationRecord,
    StationStatus,
    Usage,
    WorkProgress,
    WorkRecord,
    utcnow,
)
from ..routing import is_live
from ..telemetry import tracing


def cells(values: Sequence[Any]) -> list[RenderableType]:
    """Table cells as text: a work id, a reason or an agent's output may contain ``[...]``, which rich would
    otherwise read as markup (and fail on, or swallow)."""
    return [Text(v) if isinstance(v, str) else v for v in values]


def as_data(items: Sequence[BaseModel] | BaseModel) -> Any:
    if isinstance(items, BaseModel):
        return items.model_dump(mode="json", by_alias=True, exclude_none=True)
    return [i.model_dump(mode="json", by_alias=True, exclude_none=True) for i in items]


def to_json(items: Sequence[BaseModel] | BaseModel) -> str:
    return json.dumps(as_data(items), indent=2)


def to_yaml(items: Sequence[BaseModel] | BaseModel) -> str:
    return yaml.safe_dump(as_data(items), sort_keys=False)


def age(ts: datetime, now: datetime | None = None) -> str:
    seconds = max(((now or utcnow()) - ts).total_seconds(), 0)
    if seconds < 120:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def station_state(record: StationRecord, now: datetime | None = None) -> Text:
    if not is_live(record, now):
        return Text("Lost", style="red")
    if record.status == StationStatus.DRAINING:
        return Text("Draining", style="yellow")
    return Text("Ready", style="green")


def stations_table(records: Sequence[StationRecord], *, wide: bool = False) -> Table:
    now = utcnow()
    table = Table(title=None, box=None, header_style="bold")
    for col in ("STATION", "STATE", "LOAD", "AGENTS", "CAPABILITIES", "HEARTBEAT", "AGE"):
        table.add_column(col)
    if wide:
        table.add_column("LABELS")
        table.add_column("VERSION")
        table.add_column("PID")
    for r in records:
        row: list[Any] = [
            r.station_id, station_state(r, now), f"{r.load}/{r.capacity}", ",".join(r.agents) or "-",
            ",".join(r.capabilities) or "-", age(r.last_heartbeat, now), age(r.started_at, now),
        ]
        if wide:
            row += [",".join(f"{k}={v}" for k, v in r.labels.items()) or "-", r.version, str(r.pid or "-")]
        table.add_row(*cells(row))
    return table


def agent_problems(agent: str, stations: Sequence[StationRecord], now: datetime | None = None) -> list[str]:
    """Pure: why live stations could not load ``agent`` (``station: error``), for its READY column."""
    return [f"{s.station_id}: {s.agent_errors[agent]}" for s in stations
            if agent in s.agent_errors and is_live(s, now)]


def agents_table(agents: Sequence[AgentDefinition], stations: Sequence[StationRecord], *,
                 wide: bool = False) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("AGENT", "PROVIDER", "MODEL", "CAPABILITIES", "STATIONS", "READY", "REASON"):
        table.add_column(col)
    if wide:
        table.add_column("TOOLS")
        table.add_column("HOSTED BY")
        table.add_column("LABELS")
    now = utcnow()
    for a in agents:
        hosting = [s.station_id for s in stations if a.name in s.agents and is_live(s, now)]
        model = a.spec.model
        ready = Text("True", style="green") if hosting else Text("False", style="red")
        problems = agent_problems(a.name, stations, now)
        reason = "; ".join(problems) if problems else ("" if hosting else "no live station selects it")
        row: list[RenderableType] = [Text(a.name), Text(model.provider), Text(model.name or model.function or "-"),
                                     Text(",".join(a.spec.capabilities) or "-"), Text(str(len(hosting))), ready,
                                     Text(reason, style="yellow" if reason else "")]
        if wide:
            row += [Text(",".join(agent_tool_names(a.name, stations, hosting)) or "-"), Text(",".join(hosting) or "-"),
                    Text(",".join(f"{k}={v}" for k, v in a.labels.items()) or "-")]
        table.add_row(*cells(row))
    return table


def agent_tool_names(agent: str, stations: Sequence[StationRecord], hosting: Sequence[str]) -> list[str]:
    """The tools the stations hosting ``agent`` discovered (``source:name``), as their records list them."""
    found = {t for s in stations if s.station_id in hosting for t in s.agent_tools.get(agent, [])}
    return sorted(found)


def preview(value: Any, width: int = 48) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def results_table(rows: Sequence[tuple[int, str, InvokeResult | str, float]]) -> Table:
    """Rows of (index, agent, result or error text, client-side latency ms)."""
    table = Table(box=None, header_style="bold")
    for col, justify in (("#", "right"), ("AGENT", "left"), ("STATION", "left"), ("LATENCY", "right"),
                         ("OUTPUT", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for index, agent, result, latency_ms in rows:
        if isinstance(result, str):
            table.add_row(*cells([str(index), agent, "-", f"{latency_ms:.1f} ms", Text(result, style="red")]))
        else:
            table.add_row(*cells([str(index), agent, result.station_id, f"{latency_ms:.1f} ms",
                                  preview(result.output)]))
    return table


PHASE_STYLE = {
    "Pending": "dim", "Scheduling": "cyan", "Unschedulable": "yellow", "Assigned": "cyan", "Running": "blue",
    "Succeeded": "green", "Failed": "red", "Cancelled": "magenta", "Escalated": "bold red",
    "AwaitingApproval": "bold yellow", "AwaitingInput": "bold yellow",
}


def phase_text(phase: str) -> Text:
    return Text(phase, style=PHASE_STYLE.get(phase, ""))


def work_target(record: WorkRecord) -> str:
    spec = record.spec
    if spec.steps:
        return f"workflow({len(spec.steps)} steps)"
    return spec.agent or "+".join(spec.required_capabilities)


def work_table(records: Sequence[WorkRecord], *, wide: bool = False) -> Table:
    now = utcnow()
    table = Table(box=None, header_style="bold")
    for col in ("WORK", "TARGET", "PHASE", "STATION", "ATTEMPTS", "PROGRESS", "AGE"):
        table.add_column(col)
    if wide:
        table.add_column("REASON")
    for r in records:
        progress = f"{r.progress_percent:.0f}%" if r.progress_percent is not None else "-"
        if r.progress_message and not r.phase.terminal:  # e.g. an agent's "turn 2: calling add"
            progress = f"{progress} {r.progress_message[:40]}"
        if r.is_workflow:
            progress = f"{r.step_index}/{len(r.spec.steps)} steps done"
        row: list[Any] = [r.work_id, work_target(r), phase_text(r.phase.value), r.station_id or "-", str(r.attempt),
                          progress, age(r.created_at, now)]
        if wide:
            row.append(r.reason or (r.error.message if r.error else ""))
        table.add_row(*cells(row))
    return table


def progress_line(update: WorkProgress) -> str:
    """One progress update as a line: its message, and for agent runs the turn and the tool under way."""
    parts = [update.message] if update.message else []
    if update.turn is not None and f"turn {update.turn}" not in update.message:
        parts.append(f"turn {update.turn}")
    if update.tool and update.tool not in update.message:
        parts.append(f"tool {update.tool}")
    return " · ".join(parts)


#: ``work get`` names this many children; the rest are counted.
MAX_CHILDREN_SHOWN = 20


def usage_text(usage: Usage) -> str:
    """Tokens (cache reads and writes apart), cost, model and tool calls, and what delegated children spent."""
    parts = [f"{usage.input_tokens} in / {usage.output_tokens} out tokens"]
    if usage.cached_input_tokens or usage.cache_write_tokens:
        parts.append(f"cache {usage.cached_input_tokens} read / {usage.cache_write_tokens} written")
    if usage.cost_usd:
        parts.append(f"${usage.cost_usd:.6f}")
    parts.append(f"{usage.model_calls} model call{'s' if usage.model_calls != 1 else ''}, "
                 f"{usage.tool_calls} tool call{'s' if usage.tool_calls != 1 else ''}")
    if usage.delegated_tokens or usage.delegated_cost_usd:
        delegated = f"children: {usage.delegated_tokens} tokens"
        if usage.delegated_cost_usd:
            delegated += f", ${usage.delegated_cost_usd:.6f}"
        parts.append(delegated)
    return "; ".join(parts)


def _decision(d: HumanDecision) -> str:
    said = "answered" if d.reply is not None else ("approved" if d.approved else "rejected")
    return said + (f" by {d.by}" if d.by else "") + (f" ({d.reason})" if d.reason else "")


def work_detail(record: WorkRecord, result: Any) -> Table:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("Work", record.work_id), ("Target", work_target(record)), ("Phase", phase_text(record.phase.value)),
        ("Station", record.station_id or "-"), ("Attempt", f"{record.attempt} (retries allowed: "
                                                            f"{record.spec.max_retries})"),
        ("Created", record.created_at.isoformat()),
    ]
    for label, ts in (("Started", record.started_at), ("Finished", record.finished_at)):
        if ts:
            rows.append((label, ts.isoformat()))
    # A finished run's last progress message ("turn 1") is history, not progress: only unfinished or failed work
    # shows it (where it says what the run was doing when it stopped).
    message = "" if record.phase.value == "Succeeded" else record.progress_message
    if record.progress_percent is not None or message:
        rows.append(("Progress", f"{record.progress_percent or 0:.0f}% {message}".rstrip()))
    if record.parent_id:
        rows.append(("Parent", f"{record.parent_id} (depth {record.depth})"))
    if record.children:
        shown = record.children[:MAX_CHILDREN_SHOWN]
        more = len(record.children) - len(shown)
        rows.append(("Children", ", ".join(shown) + (f" (+{more} more)" if more else "")))
    if record.usage:
        rows.append(("Usage", usage_text(record.usage)))
    if (trace := tracing.trace_id(record.traceparent)) is not None:
        rows.append(("Trace", trace))
    if record.waiting is not None:
        w = record.waiting
        how = ("lattice work approve|reject " if w.kind == "approval" else "lattice work reply ") + record.work_id
        deadline = f"; deadline {w.deadline_at.isoformat()}" if w.deadline_at else ""
        rows.append(("Waiting", Text(f"{w.summary()} (key {w.key}, since {w.requested_at.isoformat()}{deadline}): "
                                     f"{how}", style="yellow")))
    if record.decisions:
        rows.append(("Decided", "; ".join(f"{k}: {_decision(d)}" for k, d in list(record.decisions.items())[-5:])))
    if record.reason:
        rows.append(("Reason", record.reason))
    if record.error:
        rows.append(("Error", Text(f"{record.error.code}: {record.error.message}", style="red")))
    if record.rejected_reports:
        rows.append(("Rejected", f"{record.rejected_reports} late report(s) from superseded attempts"))
    if record.phase.value == "Succeeded":
        rows.append(("Result", result if isinstance(result, str) else json.dumps(result, indent=2)))
    for label, value in rows:
        table.add_row(*cells([label, value]))
    return table


#: What a journal line shows of a text (a model's answer, a tool's result, arguments).
JOURNAL_PREVIEW = 72


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= JOURNAL_PREVIEW else text[:JOURNAL_PREVIEW - 1] + "…"


def journal_line(entry: JournalEntry) -> str:
    """What one entry says, in a line."""
    kind = entry.kind.value
    if kind == "attempt":
        return f"attempt {entry.attempt} took the run over after entry {entry.resumed_at}"
    if kind == "turn":
        said = f"{len(entry.tool_calls)} tool call(s): " + ", ".join(
            f"{c.name}({_preview(c.arguments)})" for c in entry.tool_calls) if entry.tool_calls \
            else f"answered: {_preview(entry.text)}"
        if entry.tool_calls:
            said += f"; {len(entry.started)} started" if len(entry.started) != len(entry.tool_calls) else \
                "; started"
        tokens = f" [{entry.usage.input_tokens} in / {entry.usage.output_tokens} out]" if entry.usage else ""
        return f"model ({entry.messages} messages sent) {said}{tokens}"
    if kind == "call":
        return f"{entry.name}({_preview(entry.arguments or {})}) key {entry.key}"
    took = f" in {entry.duration_ms:.1f} ms" if entry.duration_ms is not None else ""
    key = f" (key {entry.key})" if entry.key else ""
    return f"{entry.name}{key} {'failed' if entry.is_error else 'answered'}{took}: {_preview(entry.text)}"


def journal_table(entries: Sequence[JournalEntry]) -> Table:
    table = Table(box=None, title="Journal", title_justify="left", title_style="bold")
    for column in ("#", "ATTEMPT", "STATION", "TIME", "TURN", "ENTRY"):
        table.add_column(column)
    for entry in entries:
        table.add_row(str(entry.n), str(entry.attempt), entry.station_id or "-",
                      entry.at.strftime("%H:%M:%S.%f")[:-3], str(entry.turn or "-"),
                      Text(f"{entry.kind.value:<7} {journal_line(entry)}"))
    return table


def event_line(event: CloudEvent) -> Text:
    data = event.data
    detail = " ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], {}))
    line = Text(f"{event.time.strftime('%H:%M:%S.%f')[:-3]} ")
    line.append(f"{event.short_type:<20}", style=PHASE_STYLE.get(str(data.get("phase", "")), "bold"))
    line.append(f" {event.subject or '-':<34} ")
    line.append(detail, style="dim")
    return line

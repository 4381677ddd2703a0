"""latest.json, latest.png, the table in docs/benchmarks.md, and the targets checked as ratios of one run (over
several runs: the median of each run's own ratio)."""

from __future__ import annotations

import json
import math
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.context import RunContext, log

TABLE_START = "<!-- bench:table:start -->"
TABLE_END = "<!-- bench:table:end -->"
NONE = "-"


def _num(results: dict[str, Any], key: str) -> float | None:
    value = results.get(key)
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each as (value, limit, met); None where a number is missing."""
    r = lambda key: _num(results, key)  # noqa: E731
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float | None, text: str) -> None:
        met = None if value is None or limit is None else value <= limit
        out.append({"target": name, "value": None if value is None else round(value, 3),
                    "limit": None if limit is None else round(limit, 3), "met": met, "text": text})

    floor50, work50, work99 = r("floor_p50_us"), r("lattice_work_p50_us"), r("lattice_work_p99_us")
    check("work_p50_vs_floor", work50 / floor50 if work50 and floor50 else None, 5.0,
          "lattice_work p50 / floor p50 <= 5")
    celery50 = r("celery_p50_us")
    check("work_p50_vs_celery", work50 / celery50 if work50 and celery50 else None, 1.0,
          "lattice_work p50 / celery p50 <= 1")
    check("work_p99_vs_floor", work99 / floor50 if work99 and floor50 else None, 8.0,
          "lattice_work p99 / floor p50 <= 8")
    lt, ct, tt = r("lattice_throughput_per_s"), r("celery_throughput_per_s"), r("taskiq_throughput_per_s")
    check("throughput_vs_celery", 4 * ct / lt if lt and ct else None, 1.0,
          "lattice throughput >= 4 x celery (value: 4 x celery / lattice)")
    check("throughput_vs_taskiq", 1.5 * tt / lt if lt and tt else None, 1.0,
          "lattice throughput >= 1.5 x taskiq (value: 1.5 x taskiq / lattice)")
    check("auction_close_50", r("auction_close_p99_us_50_stations"), 15000.0, "auction close p99, 50 stations")
    rec, beat = r("recovery_s"), r("recovery_heartbeat_s")
    check("recovery", rec / beat if rec is not None and beat else None, 3.0,
          "recovery <= 3 heartbeat intervals (value: in heartbeats)")
    return out


def median_targets(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target judged on the median of its value in each run: the issue's targets are ratios *from the same
    run*, and the medians of the raw numbers can pair one run's lattice with another run's Celery."""
    per_run = [targets(d) for d in docs]
    out = []
    for i, last in enumerate(per_run[-1]):
        values = [run[i]["value"] for run in per_run if run[i]["value"] is not None]
        value = round(statistics.median(values), 3) if values else None
        limit = last["limit"]
        out.append({**last, "value": value, "met": None if value is None or limit is None else value <= limit,
                    "per_run": [run[i]["value"] for run in per_run]})
    return out


def document(ctx: RunContext, keys: tuple[str, ...], machine: dict[str, Any], started: datetime,
             duration_s: float) -> dict[str, Any]:
    results = {key: ctx.results.get(key) for key in keys}
    extra = {k: v for k, v in ctx.results.items() if k not in results}
    doc: dict[str, Any] = {**results, **extra}
    doc.update(mode=ctx.mode.name, started_at=started.isoformat(timespec="seconds"),
               duration_s=round(duration_s, 1), machine=machine, skipped=ctx.skipped, details=ctx.details)
    doc["targets"] = targets(doc)
    return doc


def write(doc: dict[str, Any], out: Path, name: str = "latest") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    if name == "latest" and doc.get("mode") in ("full", "quick") and not doc.get("only"):  # complete runs only
        history = out / "history"
        history.mkdir(exist_ok=True)
        stamp = doc["started_at"].replace(":", "").replace("-", "")
        (history / f"{doc['mode']}-{stamp}.json").write_text(json.dumps(doc, indent=2) + "\n")
    try:
        plot(doc, out / f"{name}.png")
    except ImportError:
        log.warning("matplotlib is not installed: no plot (bench/setup.sh installs it)")


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    details = doc.get("details", {})
    fig, (lat_ax, tp_ax, auc_ax) = plt.subplots(1, 3, figsize=(15, 4.8))
    rows = [("NATS floor", "floor"), ("lattice invoke", "lattice_invoke_3_stations"),
            ("lattice work", "lattice_work_3_stations"), ("Celery", "celery_1_worker"),
            ("taskiq", "taskiq_1_worker")]
    names = [n for n, k in rows if k in details]
    p50 = [details[k]["p50_us"] / 1000 for _, k in rows if k in details]
    p99 = [details[k]["p99_us"] / 1000 for _, k in rows if k in details]
    xs = range(len(names))
    lat_ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    lat_ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
    lat_ax.set_xticks(list(xs), names, rotation=20)
    lat_ax.set_ylabel("ms per no-op task (one in flight)")
    lat_ax.set_title("Latency")
    lat_ax.legend()
    tp = [(n, doc.get(k)) for n, k in (("lattice", "lattice_throughput_per_s"), ("Celery", "celery_throughput_per_s"),
                                        ("taskiq", "taskiq_throughput_per_s")) if doc.get(k)]
    tp_ax.bar([n for n, _ in tp], [v for _, v in tp], color="tab:green")
    tp_ax.set_ylabel("tasks / s (4 workers, fixed concurrency)")
    tp_ax.set_title("Throughput")
    counts = sorted(int(k.split("_")[2]) for k in details if k.startswith("lattice_work_") and k.endswith("stations"))
    if counts:
        work = [details[f"lattice_work_{c}_stations"] for c in counts]
        auc_ax.plot(counts, [w["p50_us"] / 1000 for w in work], "o-", label="work p50")
        auc_ax.plot(counts, [w["p99_us"] / 1000 for w in work], "o-", label="work p99")
        auc_ax.plot(counts, [(w.get("auction_close_p99_us") or 0) / 1000 for w in work], "s--",
                    label="auction close p99")
        auc_ax.set_xscale("log")
        auc_ax.set_xticks(counts, [str(c) for c in counts])
        auc_ax.set_xlabel("stations")
        auc_ax.set_ylabel("ms")
        auc_ax.set_title("Async work vs lattice size")
        auc_ax.legend()
    machine = doc.get("machine", {})
    what = f"median of {doc['runs']} {doc.get('mode')} runs" if doc.get("runs") else doc.get("mode")
    fig.suptitle(f"Station Lattice benchmarks ({what}, {machine.get('cores')} cores "
                 f"{machine.get('cpu_model')}, {doc.get('started_at')})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return NONE
    if isinstance(value, float) and value >= 100:
        value = round(value)
    return f"{value:,}{unit}" if isinstance(value, (int, float)) else str(value)


def table(doc: dict[str, Any]) -> str:
    d = doc.get("details", {})

    def lat(key: str) -> tuple[str, str]:
        row = d.get(key)
        return (_fmt(row["p50_us"] / 1000), _fmt(row["p99_us"] / 1000)) if row else (NONE, NONE)

    def ms(value: float | None) -> str:
        return NONE if value is None else f"{value / 1000:.2f}"

    floor = doc.get("floor_p50_us")
    lines = ["| scenario | p50 ms | p99 ms | x floor p50 | throughput /s (4 workers) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    rows: list[tuple[str, str, str | None]] = [
        ("NATS request/reply (floor)", "floor", None),
        ("lattice invoke (sync, 3 stations)", "lattice_invoke_3_stations", None)]
    rows += [(f"lattice work, {c} station{'s' if c > 1 else ''}", f"lattice_work_{c}_stations",
              "lattice_throughput_per_s" if c == 3 else None) for c in (1, 3, 10, 50)]
    rows += [("Celery (Redis broker + backend)", "celery_1_worker", "celery_throughput_per_s"),
             ("taskiq (NATS broker, Redis results)", "taskiq_1_worker", "taskiq_throughput_per_s")]
    for label, key, tp in rows:
        row = d.get(key)
        if row is None:
            continue
        ratio = f"{row['p50_us'] / floor:.1f}" if floor else NONE
        lines.append(f"| {label} | {ms(row['p50_us'])} | {ms(row['p99_us'])} | {ratio} | "
                     f"{_fmt(doc.get(tp)) if tp else ''} |")
    lines.append("")
    lines.append("| other | value |")
    lines.append("| --- | ---: |")
    for c in (1, 3, 10, 50):
        row = d.get(f"lattice_work_{c}_stations")
        if row and row.get("offers"):
            lines.append(f"| placement, {c} station{'s' if c > 1 else ''}: offers taken / declined (then auctioned);"
                         f" offer answered p50 / p99 (ms) | {row['offers'] - row['offers_declined']} / "
                         f"{row['offers_declined']}; {ms(row.get('offer_answer_p50_us'))} / "
                         f"{ms(row.get('offer_answer_p99_us'))} |")
    for c in (3, 10, 50):
        row = d.get(f"lattice_work_{c}_stations")
        if row and row.get("auction_close_p99_us") is not None:
            only = f"; item p50 {ms(row['auction_only_p50_us'])}" if row.get("auction_only_p50_us") else ""
            lines.append(f"| auction close p50 / p99, {c} stations, every item auctioned (ms) | "
                         f"{ms(row['auction_close_p50_us'])} / {ms(row['auction_close_p99_us'])} "
                         f"(bids per auction {row.get('bids_per_auction')}{only}) |")
    timeline = (d.get("lattice_work_3_stations") or {}).get("timeline_us")
    if timeline:
        steps = ", ".join(f"{k.replace('_', ' ')} {v / 1000:.2f}" for k, v in timeline.items())
        lines.append(f"| one item on 3 stations, ms since submit (median) | {steps} |")
    if doc.get("recovery_s") is not None:
        lines.append(f"| recovery after SIGKILL (s; heartbeat {doc.get('recovery_heartbeat_s')} s) | "
                     f"{doc['recovery_s']:.2f} |")
    if doc.get("station_idle_rss_mb") is not None:
        lines.append(f"| idle station RSS (MB) | {doc['station_idle_rss_mb']:.0f} |")
    lines.append("")
    lines.append("| target | value | limit | met | each run |")
    lines.append("| --- | ---: | ---: | :---: | ---: |")
    for t in doc.get("targets", []):
        met = {True: "yes", False: "**no**", None: NONE}[t["met"]]
        each = ", ".join(_fmt(v) for v in t.get("per_run", []))
        lines.append(f"| {t['text']} | {_fmt(t['value'])} | {_fmt(t['limit'])} | {met} | {each} |")
    m = doc.get("machine", {})
    runs = doc.get("runs")
    what = f"median of {runs} `--{doc.get('mode')}` runs" if runs else f"one `--{doc.get('mode')}` run"
    lines.append("")
    lines.append(f"*{what}, {doc.get('started_at')}, commit `{m.get('git_commit')}`: {m.get('cores')} x "
                 f"{m.get('cpu_model')}, {m.get('memory_gib')} GiB, Python {m.get('python')}, "
                 f"{m.get('nats_server')}, nats-py {m.get('nats_py')}, uvloop {m.get('uvloop')}, "
                 f"Celery {m.get('celery')}, taskiq {m.get('taskiq')} (taskiq-nats {m.get('taskiq_nats')}, "
                 f"taskiq-redis {m.get('taskiq_redis')}), {m.get('redis_server')}.*")
    return "\n".join(lines)


def update_docs(doc: dict[str, Any], path: Path) -> None:
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{TABLE_START}\n{TABLE_END}\n"
    if TABLE_START not in text or TABLE_END not in text:
        log.warning("%s has no table markers; not updated", path)
        return
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    path.write_text(f"{head}{TABLE_START}\n{table(doc)}\n{TABLE_END}{tail}")
    log.info("table updated in %s", path)


def median_of(history: Path, mode: str, count: int) -> dict[str, Any]:
    """The median, number by number, of the last ``count`` runs of ``mode`` (the machine is noisy)."""
    files = sorted(history.glob(f"{mode}-*.json"))[-count:]
    if not files:
        raise SystemExit(f"no {mode} runs in {history}")
    docs = [json.loads(f.read_text()) for f in files]
    out: dict[str, Any] = _median(docs)
    out["runs"] = len(docs)
    out["run_files"] = [f.name for f in files]
    out["targets"] = median_targets(docs)
    return out


def _median(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {k: _median([v.get(k) for v in values if isinstance(v, dict)]) for k in first}
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if nums and len(nums) == len(values):
        return round(statistics.median(nums), 3)
    return values[-1]


def print_summary(doc: dict[str, Any]) -> None:
    print(table(doc))
    for name, why in doc.get("skipped", {}).items():
        print(f"skipped {name}: {why}")

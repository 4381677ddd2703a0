"""``python -m bench run --full|--quick|--smoke``: every scenario, one run, one machine; then the JSON, the plot
and the table in docs/benchmarks.md.  ``python -m bench median``: the median of the last three runs.
``python -m bench profile``: pyinstrument over the async-work hot path (client and station in one process).
``python -m bench docs [FILE]``: the table in docs/benchmarks.md from a results file (default latest.json).

    --full    ~5-8 minutes: 2000 round trips per latency scenario, 1/3/10/50 stations, 3 recovery trials
    --quick   under a minute: the same scenarios with fewer iterations
    --smoke   seconds: floor, invoke and work with a handful of iterations (the test suite runs it)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.common import MODES, ROOT, Mode, Skipped
from bench.context import RunContext, log
from bench.machine import machine_info

RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Scenario:
    name: str
    #: ``module:function`` taking a RunContext; imported only when the scenario runs (Celery may be absent).
    target: str
    #: The modes that run it.
    modes: tuple[str, ...] = ("full", "quick", "smoke")
    #: Result keys this scenario fills (null in the JSON when it is skipped).
    keys: tuple[str, ...] = ()
    #: Set to a reason to skip it everywhere (a scenario whose subject does not exist yet).
    disabled: str = ""

    def load(self) -> Callable[[RunContext], Awaitable[None]]:
        module, _, function = self.target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise Skipped(f"{exc.name or exc} is not installed (bench/setup.sh installs the 'bench' extra)") from exc
        fn: Callable[[RunContext], Awaitable[None]] = getattr(mod, function)
        return fn


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("floor", "bench.floor:run", keys=("floor_p50_us", "floor_p99_us")),
    # Also the idle station's RSS (on the one-station lattice, before its first work item).
    Scenario("lattice_work", "bench.lattice:run_work",
             keys=("lattice_work_p50_us", "lattice_work_p99_us", "lattice_invoke_p50_us",
                   "auction_close_p99_us_50_stations", "station_idle_rss_mb")),
    Scenario("lattice_throughput", "bench.lattice:run_throughput", keys=("lattice_throughput_per_s",)),
    Scenario("recovery", "bench.lattice:run_recovery", modes=("full", "quick"), keys=("recovery_s",)),
    Scenario("celery", "bench.celery_bench:run", modes=("full", "quick"),
             keys=("celery_p50_us", "celery_throughput_per_s")),
    Scenario("taskiq", "bench.taskiq_bench:run", modes=("full", "quick"),
             keys=("taskiq_p50_us", "taskiq_throughput_per_s")),
    # The Kubernetes operator on the test control plane: WorkItem resource -> status Succeeded, 500 drained, RSS.
    Scenario("operator", "bench.k8s_operator:run", modes=("full",), keys=("operator_workitem_p50_ms",)),
    # `lattice up` and a submitting process over tens of thousands of items: memory per 10k, contention's cost.
    Scenario("soak", "bench.soak:run", modes=("full", "quick"),
             keys=("soak_rss_mb_per_10k_items", "contention_attempts_spent_5000_items")),
    Scenario("idle_controller", "bench.soak:run_idle_controller", modes=("full", "quick"),
             keys=("idle_controller_cpu_pct_0_records", "idle_controller_cpu_pct_20k_records")),
    # Agents: the loop's own cost per turn and per tool call; one station carrying 500 streaming runs.
    Scenario("agent_overhead", "bench.agents:run_overhead", modes=("full", "quick"),
             keys=("agent_turn_overhead_us", "agent_tool_call_overhead_us")),
    Scenario("agent_streams", "bench.agents:run_streams", modes=("full", "quick"),
             keys=("agent_streams_500_rss_mb", "agent_streams_500_progress_lag_p99_ms", "agent_streams_500_lost")),
    # Telemetry: the work p50 traced at 100 % against untraced (child clients, interleaved), a /metrics scrape.
    Scenario("tracing_cost", "bench.telemetry:run_tracing", modes=("full", "quick"),
             keys=("lattice_work_p50_us_traced",)),
    Scenario("metrics_scrape", "bench.telemetry:run_scrape", modes=("full", "quick"),
             keys=("metrics_scrape_ms_50_stations",)),
    # Durable agent runs (journal on, fsync on) against Temporal workflows (dev server, SQLite): latency,
    # throughput with 4 workers and 50 in flight, and what the journal costs per turn.
    Scenario("durable_runs", "bench.durable:run", modes=("full", "quick"),
             keys=("durable_run_p50_us", "durable_run_p99_us", "durable_run_throughput_per_s",
                   "temporal_run_p50_us", "temporal_run_p99_us", "temporal_run_throughput_per_s",
                   "journal_cost_per_turn_us")),
    # A three-node JetStream cluster, kill -9 of the meta leader, the work bucket's leader and a follower under
    # load: the pause in progress each costs (the fault test's own measurement, three runs in --full).
    Scenario("cluster_faults", "bench.cluster:run", modes=("full", "quick"), keys=("leader_loss_pause_s",)),
    # 100,000 finished records and 100 active: a restarted station's resume and a witness tick against none.
    Scenario("scale", "bench.scale:run", modes=("full", "quick"),
             keys=("station_resume_ms_0_records", "station_resume_ms_100k_records", "witness_sweep_cpu_ms_0_records",
                   "witness_sweep_cpu_ms_100k_records")),
    # Two operator replicas on the test control plane (a 3 s Lease), the active one killed with -9.
    Scenario("operator_failover", "bench.cluster:run_failover", modes=("full", "quick"),
             keys=("operator_failover_s",)),
)

#: Every key of latest.json's ``results``, in the issue's order; present (maybe null) in every run.
RESULT_KEYS: tuple[str, ...] = (
    "floor_p50_us", "floor_p99_us", "lattice_invoke_p50_us", "lattice_work_p50_us", "lattice_work_p99_us",
    "auction_close_p99_us_50_stations", "celery_p50_us", "taskiq_p50_us", "lattice_throughput_per_s",
    "celery_throughput_per_s", "taskiq_throughput_per_s", "recovery_s", "station_idle_rss_mb",
    "soak_rss_mb_per_10k_items", "contention_attempts_spent_5000_items", "idle_controller_cpu_pct_0_records",
    "idle_controller_cpu_pct_20k_records", "agent_turn_overhead_us", "agent_tool_call_overhead_us",
    "agent_streams_500_rss_mb", "agent_streams_500_progress_lag_p99_ms", "agent_streams_500_lost",
    "lattice_work_p50_us_traced", "metrics_scrape_ms_50_stations", "durable_run_p50_us", "durable_run_p99_us",
    "durable_run_throughput_per_s", "temporal_run_p50_us", "temporal_run_p99_us", "temporal_run_throughput_per_s",
    "journal_cost_per_turn_us", "leader_loss_pause_s", "operator_failover_s", "station_resume_ms_0_records",
    "station_resume_ms_100k_records", "witness_sweep_cpu_ms_0_records", "witness_sweep_cpu_ms_100k_records",
)


async def run_all(mode: Mode, workdir: Path, only: set[str] | None) -> RunContext:
    from station_runtime.natsio.embedded import EmbeddedNats

    # No fsync: Redis runs without persistence too, and a benchmark of fsync measures the disk.
    async with EmbeddedNats(workdir / "nats", sync_always=False, max_file_store_bytes=None) as server:
        ctx = RunContext(mode=mode, workdir=workdir, nats_url=server.url, nats_pid=server.pid)
        try:
            for scenario in SCENARIOS:
                if only and scenario.name not in only:
                    continue
                reason = scenario.disabled or ("" if mode.name in scenario.modes else f"not part of --{mode.name}")
                if not reason:
                    t0 = time.monotonic()
                    try:
                        await scenario.load()(ctx)
                        ctx.details.setdefault("scenario_seconds", {})[scenario.name] = \
                            round(time.monotonic() - t0, 1)
                        continue
                    except Skipped as exc:
                        reason = str(exc)
                    except Exception as exc:  # one broken scenario must not cost the others
                        log.exception("%s failed", scenario.name)
                        reason = f"failed: {type(exc).__name__}: {exc}"
                ctx.skipped[scenario.name] = reason
                for key in scenario.keys:
                    ctx.results.setdefault(key, None)
                log.info("%-34s skipped: %s", scenario.name, reason)
        finally:
            if ctx.redis is not None:
                ctx.redis.stop()
    return ctx


def setup() -> None:
    script = ROOT / "bench" / "setup.sh"
    result = subprocess.run(["bash", str(script)], env={**os.environ, "PYTHON": sys.executable})
    if result.returncode != 0:
        log.warning("bench/setup.sh failed (exit %d): Celery/taskiq may be skipped", result.returncode)


def cmd_run(args: argparse.Namespace) -> int:
    from bench import report

    mode = MODES["full" if args.full else "smoke" if args.smoke else "quick"]
    if not args.no_setup and mode.name != "smoke":
        setup()
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    started = datetime.now(UTC)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        import uvloop

        ctx = uvloop.run(run_all(mode, Path(tmp), only))
    doc = report.document(ctx, RESULT_KEYS, {**machine_info(), "loadavg_at_start": load_at_start}, started,
                          time.monotonic() - t0)
    doc["only"] = sorted(only) if only else None
    report.write(doc, out)
    # Only complete --full runs rewrite the docs' table (python -m bench median puts the median of three there).
    if out.resolve() == RESULTS.resolve() and mode.name == "full" and not only:
        report.update_docs(doc, DOCS)
    report.print_summary(doc)
    return 0


def cmd_median(args: argparse.Namespace) -> int:
    from bench import report

    doc = report.median_of(RESULTS / "history", args.mode, args.count)
    report.write(doc, RESULTS, name="median")
    report.update_docs(doc, DOCS)
    report.print_summary(doc)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    import json

    from bench import report

    report.update_docs(json.loads(Path(args.file).read_text()), DOCS)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from bench import profile

    return profile.main(args.n, Path(args.out) if args.out else RESULTS)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("station_runtime", "nats", "celery", "taskiq", "kombu"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the scenarios and write the results")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true")
    size.add_argument("--quick", action="store_true")
    size.add_argument("--smoke", action="store_true")
    run.add_argument("--out", help="directory for latest.json and latest.png (default bench/results)")
    run.add_argument("--only", help="comma-separated scenario names")
    run.add_argument("--no-setup", action="store_true", help="do not run bench/setup.sh")
    run.set_defaults(fn=cmd_run)
    med = sub.add_parser("median", help="median of the last runs of a mode into median.json and the docs")
    med.add_argument("--mode", default="full")
    med.add_argument("--count", type=int, default=3)
    med.set_defaults(fn=cmd_median)
    docs = sub.add_parser("docs", help="regenerate the table in docs/benchmarks.md from a results file")
    docs.add_argument("file", nargs="?", default=str(RESULTS / "latest.json"))
    docs.set_defaults(fn=cmd_docs)
    prof = sub.add_parser("profile", help="pyinstrument the async-work hot path")
    prof.add_argument("-n", type=int, default=2000)
    prof.add_argument("--out")
    prof.set_defaults(fn=cmd_profile)
    args = parser.parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

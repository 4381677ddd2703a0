"""The benchmark runner works and writes complete results. A smoke run, never a timing: ``python -m bench run
--smoke`` measures the floor, invoke and async work with a handful of iterations into a temp dir. Celery and
taskiq are not part of it (they need redis-server and the ``bench`` extra); their keys are present and null,
with the reason under ``skipped``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import RESULT_KEYS

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)


def test_smoke_run_writes_every_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--smoke", "--no-setup", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=80)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads((tmp_path / "latest.json").read_text())

    assert set(RESULT_KEYS) <= set(doc), set(RESULT_KEYS) - set(doc)
    for key in ("floor_p50_us", "floor_p99_us", "lattice_invoke_p50_us", "lattice_work_p50_us",
                "lattice_work_p99_us", "lattice_throughput_per_s", "station_idle_rss_mb"):
        # A failed scenario is recorded as skipped with its error: say it.
        assert isinstance(doc[key], (int, float)) and doc[key] > 0, (key, doc[key], doc["skipped"],
                                                                     result.stdout[-3000:])
    for key in ("celery_p50_us", "taskiq_p50_us", "recovery_s", "auction_close_p99_us_50_stations"):
        assert doc[key] is None
    assert {"celery", "taskiq", "recovery", "operator", "auction_close_p99_us_50_stations"} <= set(doc["skipped"])
    assert doc["skipped"]["operator"] == "not part of --smoke"
    for key in ("cpu_model", "cores", "python", "nats_server", "nats_py", "celery", "taskiq", "git_commit"):
        assert key in doc["machine"]
    assert doc["mode"] == "smoke" and {t["target"] for t in doc["targets"]} >= {"work_p50_vs_floor", "recovery"}
    assert doc["details"]["lattice_work_3_stations"]["n"] > 0
    # A smoke run leaves the committed results and the docs alone.
    assert not (tmp_path / "history").exists()

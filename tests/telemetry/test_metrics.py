"""Metrics as a real Prometheus sees them: it scrapes ``lattice controller --metrics-port`` and a station's health
port while the test makes work, and PromQL answers with the queue depth and the work counters the test produced.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase
from station_runtime.contract.specs import WorkItemSpec
from tests.support.controlplane import free_ports
from tests.support.lattice import StationProcess, echo_agent, python_agent
from tests.support.telemetry import Prometheus, prometheus_binary
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(120), pytest.mark.telemetry]


def scrape(port: int) -> str:
    """The /metrics text, or "" while the process does not listen yet."""
    try:
        return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    except OSError:
        return ""


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    prometheus_binary()  # skip (or fail in CI) before starting anything
    controller, station = free_ports(2)
    yield controller, station


async def test_prometheus_reads_queue_depth_and_work_counters(
        client: LatticeClient, nats_url: str, org: str, tmp_path: Path, ports: tuple[int, int]) -> None:
    controller_port, station_port = ports
    await client.put_agent(echo_agent("echo"))
    await client.put_agent(python_agent("broken", "tests.support.agents:boom"))
    station = StationProcess(nats_url, org, "s-metrics", tmp_path, "--health-port", str(station_port),
                             "--max-concurrency", "8").start()
    controller = subprocess.Popen(
        [sys.executable, "-m", "station_runtime", "--nats", nats_url, "--org", org, "controller", "run",
         "--interval", "0.2", "--metrics-port", str(controller_port)],
        env={**os.environ}, stdout=open(tmp_path / "controller.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    prometheus = None
    try:
        await client.wait_for_stations(1, agent="echo", timeout_s=30)
        await eventually(lambda: asyncio.to_thread(lambda: "lattice_work_items" in scrape(controller_port)),
                         timeout_s=30, what="the controller's /metrics")
        prometheus = Prometheus(tmp_path, [f"127.0.0.1:{controller_port}", f"127.0.0.1:{station_port}"]).start()
        ids = [(await client.submit(WorkItemSpec(agent="echo", input=f"x{i}"), watch=True)).work_id for i in range(5)]
        failing = (await client.submit(WorkItemSpec(agent="broken", input="boom", max_retries=0),
                                       watch=True)).work_id
        # Nobody hosts this agent: it waits, unschedulable, and is the queue's depth.
        for i in range(2):
            await client.submit(WorkItemSpec(agent="nobody", input=f"w{i}"))
        finals = [await client.wait_work(i, timeout_s=30) for i in [*ids, failing]]
        assert [f.phase for f in finals] == [WorkPhase.SUCCEEDED] * 5 + [WorkPhase.FAILED]

        def value(result: list[dict[str, object]]) -> dict[str, float]:
            return {str(r["metric"].get("phase") or r["metric"].get("outcome")): float(r["value"][1])  # type: ignore[index, union-attr]
                    for r in result}

        async def counted() -> dict[str, dict[str, float]] | None:
            answers = {
                "finished": value(prometheus.query(f'sum by (phase) (lattice_work_finished_total{{org="{org}"}})')),
                "depth": value(prometheus.query(f'lattice_work_items{{org="{org}"}}')),
                "runs": value(prometheus.query('sum by (outcome) (lattice_station_runs_total{agent="echo"})')),
                "submitted": {"all": sum(value(prometheus.query(
                    f'sum(lattice_work_submitted_total{{org="{org}"}})')).values())},
            }
            ok = (answers["finished"] == {"succeeded": 5.0, "failed": 1.0}
                  and answers["depth"].get("unschedulable") == 2.0 and answers["runs"] == {"succeeded": 5.0}
                  and answers["submitted"]["all"] == 8.0)
            return answers if ok else None

        answers = await eventually(counted, timeout_s=30, what="Prometheus to read the test's work", interval_s=0.25)
        print(f"\nPromQL answers: {answers}")  # the closing note's figures
        assert answers["depth"]["pending"] == 0.0 and answers["depth"]["running"] == 0.0
        [waiting] = prometheus.query(f'lattice_work_waiting_age_seconds{{org="{org}"}}')
        assert float(waiting["value"][1]) > 0  # the two unschedulable items wait
        stations = prometheus.query(f'lattice_station_capacity{{org="{org}"}}')
        assert [(s["metric"]["station"], s["value"][1]) for s in stations] == [("s-metrics", "8")]
        text = scrape(station_port)
        assert "lattice_work_run_duration_seconds_bucket" in text and "process_resident_memory_bytes" in text
    finally:
        if prometheus is not None:
            prometheus.stop()
        controller.terminate()
        station.stop()
        await asyncio.to_thread(controller.wait, 10)

"""End to end on the test control plane: the operator reconciles Station, Agent and WorkItem resources; station
pods run through the process kubelet and join the lattice on a real nats-server; WorkItems succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from kubernetes import client

from station_runtime.api.models import GROUP, VERSION
from station_runtime.natsio.embedded import EmbeddedNats
from tests.support.crds import install_crds
from tests.support.kube_fixtures import KubeCluster
from tests.support.waiting import wait_sync

T = TypeVar("T")

pytestmark = [pytest.mark.k8s, pytest.mark.e2e, pytest.mark.timeout(180)]


class Operator:
    """``lattice operator`` as a separate process, as it runs in its pod."""

    def __init__(self, kubeconfig: Path, nats_url: str, namespace: str, log: Path) -> None:
        self.log_path = log
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LATTICE_STATION_HEALTH_PORT": "none",
                    "LATTICE_STATION_HEARTBEAT": "0.5", "LATTICE_STATION_DRAIN_TIMEOUT": "5", "LATTICE_RESYNC": "1",
                    "LATTICE_WORK_RESYNC": "2", "LATTICE_WITNESS_INTERVAL": "0.3", "PYTHONUNBUFFERED": "1"}
        self.argv = [sys.executable, "-m", "station_runtime", "--nats", nats_url, "operator", "-n", namespace,
                     "--liveness-port", "0"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the operator did not stop within 20s of SIGTERM: {self.output()}") from None
            finally:
                self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@pytest.fixture
def crds(kube_cluster: KubeCluster) -> Iterator[Any]:
    if kube_cluster.kubelet is None:
        pytest.skip("runs station pods through the process kubelet against a local nats-server; on an existing "
                    "cluster the Helm e2e (tests/helm -m e2e) covers the same ground")
    with kube_cluster.api_client() as api:
        install_crds(api)
        yield api


@pytest.fixture
def operator(kube_cluster: KubeCluster, crds: Any, nats_url: str, k8s_namespace: str,
             tmp_path: Path) -> Iterator[Operator]:
    op = Operator(kube_cluster.kubeconfig, nats_url, k8s_namespace, tmp_path / "operator.log").start()
    yield op
    op.stop()


def apply(api: Any, namespace: str, text: str) -> None:
    custom = client.CustomObjectsApi(api)
    for doc in yaml.safe_load_all(text):
        plural = {"Station": "stations", "Agent": "agents", "ToolServer": "toolservers",
                  "WorkItem": "workitems"}[doc["kind"]]
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, doc)


def get(api: Any, namespace: str, plural: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                                       plural, name)
    return result


def condition(obj: dict[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return str(c["status"])
    return None


MANIFESTS = f"""\
apiVersion: {GROUP}/{VERSION}
kind: Station
metadata: {{name: worker}}
spec: {{replicas: 2, capabilities: [text], maxConcurrency: 4}}
---
apiVersion: {GROUP}/{VERSION}
kind: Agent
metadata: {{name: echo}}
spec: {{capabilities: [say], model: {{provider: echo, params: {{prefix: "done: "}}}}}}
"""


def test_station_agent_and_work_items_reconcile_to_success(crds: Any, operator: Operator, k8s_namespace: str,
                                                           nats_server: EmbeddedNats) -> None:
    apply(crds, k8s_namespace, MANIFESTS)
    station = wait_sync(lambda: (s := get(crds, k8s_namespace, "stations", "worker"))
                        and condition(s, "Ready") == "True" and s, timeout_s=60,
                        what=f"Station worker Ready (operator log: {operator.output()})")
    assert station["status"]["readyReplicas"] == 2 and station["status"]["org"] == k8s_namespace
    assert sorted(station["status"]["stations"]) == ["worker-0", "worker-1"]
    # Ready as soon as one station hosts it; the count of stations is refreshed on a timer: wait for both.
    agent = wait_sync(lambda: (a := get(crds, k8s_namespace, "agents", "echo")) and (a.get("status") or {})
                      .get("ready") and a["status"].get("stations") == 2 and a, timeout_s=30,
                      what="Agent echo Ready on both stations")
    assert condition(agent, "Ready") == "True"

    for i in range(3):
        apply(crds, k8s_namespace, f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata: {{name: job-{i}}}\n"
                                   f"spec: {{agent: echo, input: 'task {i}'}}\n")
    for i in range(3):
        item = wait_sync(lambda i=i: (w := get(crds, k8s_namespace, "workitems", f"job-{i}"))
                         and (w.get("status") or {}).get("phase") == "Succeeded" and w, timeout_s=30,
                         what=f"WorkItem job-{i} Succeeded (operator log: {operator.output()})")
        status = item["status"]
        assert status["result"] == f"done: task {i}" and status["station"] in ("worker-0", "worker-1")
        assert status["attempts"] == 1 and status["workId"].startswith("wi-")
        assert condition(item, "Succeeded") == "True"
    # One runtime for the org in the operator: one connection, one registry watch, one work watch (the witness's
    # index, which the WorkItem mirror reads too), as the server sees them.
    assert _server_view(nats_server, k8s_namespace) == {"operator connections": 1, "stations bucket consumers": 1,
                                                        "work bucket consumers": 1}


def _server_view(server: EmbeddedNats, org: str) -> dict[str, int]:
    assert server.monitor_url is not None
    with httpx.Client(base_url=server.monitor_url, timeout=5) as http:
        connections = http.get("/connz", params={"limit": 10_000}).json()["connections"]
        streams = {s["name"]: s for a in http.get("/jsz", params={"streams": 1, "consumers": 1}).json()
                   .get("account_details", []) for s in a.get("stream_detail", [])}

    def consumers(kind: str) -> int:
        return len(streams[f"KV_lattice-{org}-{kind}"].get("consumer_detail") or [])

    return {"operator connections": sum(c.get("name") == f"lattice-operator-{org}" for c in connections),
            "stations bucket consumers": consumers("stations"), "work bucket consumers": consumers("work")}


def test_bad_resources_get_a_condition_not_a_crash(crds: Any, operator: Operator, k8s_namespace: str) -> None:
    apply(crds, k8s_namespace, f"""\
apiVersion: {GROUP}/{VERSION}
kind: Agent
metadata: {{name: keyed}}
spec:
  model: {{provider: openai, name: gpt-test, apiKeySecretRef: {{name: missing, key: api-key}}}}
---
apiVersion: {GROUP}/{VERSION}
kind: Station
metadata: {{name: elsewhere}}
spec: {{org: someone-else}}
""")
    seen: list[Any] = []
    try:
        agent = _waiting_on(operator, lambda: (a := get(crds, k8s_namespace, "agents", "keyed"))
                            and not seen.append(a.get("status")) and condition(a, "Accepted") == "False" and a,
                            timeout_s=30, what="the agent's missing-secret condition")
    except AssertionError as exc:
        raise AssertionError(f"the agent's last status: {seen[-1:]}\n{exc}") from None
    accepted = next(c for c in agent["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["reason"] == "SecretMissing" and "missing" in accepted["message"]
    station = _waiting_on(operator, lambda: (s := get(crds, k8s_namespace, "stations", "elsewhere"))
                          and condition(s, "Accepted") == "False" and s, timeout_s=30,
                          what="the station's org-mismatch condition")
    accepted = next(c for c in station["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["reason"] == "OrgMismatch" and "someone-else" in accepted["message"]
    assert operator.proc is not None and operator.proc.poll() is None


def _waiting_on(operator: Operator, check: Callable[[], T | None], *, timeout_s: float, what: str) -> T:
    """wait_sync, with the operator's log in the failure: what it was doing is the only clue to a missed event."""
    try:
        return wait_sync(check, timeout_s=timeout_s, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log (last 6000 characters):\n{operator.output()}") from None


def _work_record(nats_url: str, org: str, work_id: str) -> Any:
    import asyncio

    from station_runtime.client import LatticeClient
    from station_runtime.natsio.connect import NatsSettings

    async def read() -> Any:
        async with LatticeClient(NatsSettings(url=nats_url), org) as client:
            return await client.get_work(work_id)

    return asyncio.run(read())


def _station_records(nats_url: str, org: str) -> Any:
    import asyncio

    from station_runtime.client import LatticeClient
    from station_runtime.natsio.connect import NatsSettings

    async def read() -> Any:
        async with LatticeClient(NatsSettings(url=nats_url), org) as client:
            return await client.stations()

    return asyncio.run(read())


SLOW = f"""\
apiVersion: {GROUP}/{VERSION}
kind: Station
metadata: {{name: worker}}
spec: {{replicas: 2}}
---
apiVersion: {GROUP}/{VERSION}
kind: Agent
metadata: {{name: slow}}
spec: {{model: {{provider: echo, params: {{delaySeconds: 3, steps: 6}}}}}}
"""


def _phase(api: Any, namespace: str, name: str) -> str | None:
    return (get(api, namespace, "workitems", name).get("status") or {}).get("phase")


def test_killed_station_pod_deleted_work_item_and_restarted_operator(crds: Any, operator: Operator,
                                                                     k8s_namespace: str, nats_url: str) -> None:
    import os
    import signal

    apply(crds, k8s_namespace, SLOW)
    wait_sync(lambda: condition(get(crds, k8s_namespace, "stations", "worker"), "Ready") == "True", timeout_s=60,
              what="Station Ready")
    apply(crds, k8s_namespace, "\n---\n".join(
        f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata: {{name: job-{i}}}\n"
        f"spec: {{agent: slow, input: j{i}}}" for i in range(4)))
    wait_sync(lambda: _phase(crds, k8s_namespace, "job-0") == "Running", timeout_s=30, what="job-0 Running")
    # Kill -9 the station process running job-0: the kubelet restarts the container, the station resumes its work
    # (or the witness moves it); the WorkItem still succeeds.
    status = get(crds, k8s_namespace, "workitems", "job-0")["status"]
    victim = next(r for r in _station_records(nats_url, k8s_namespace) if r.station_id == status["station"])
    assert victim.pid
    os.kill(victim.pid, signal.SIGKILL)
    # Delete a running WorkItem: its work is cancelled.
    wait_sync(lambda: _phase(crds, k8s_namespace, "job-1") in ("Running", "Assigned"), timeout_s=30,
              what="job-1 placed")
    work_id = get(crds, k8s_namespace, "workitems", "job-1")["status"]["workId"]
    client.CustomObjectsApi(crds).delete_namespaced_custom_object(GROUP, VERSION, k8s_namespace, "workitems", "job-1")
    wait_sync(lambda: (r := _work_record(nats_url, k8s_namespace, work_id)) and r.phase.value == "Cancelled",
              timeout_s=30, what="job-1's work to be cancelled")
    # Restart the operator mid-run (kill -9): nothing is lost.
    operator.stop(kill=True)
    apply(crds, k8s_namespace, f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata: {{name: late}}\n"
                               "spec: {agent: slow, input: late}\n")
    operator.start()
    for name, expected in (("job-0", "j0"), ("job-2", "j2"), ("job-3", "j3"), ("late", "late")):
        item = wait_sync(lambda name=name: (w := get(crds, k8s_namespace, "workitems", name))
                         and (w.get("status") or {}).get("phase") == "Succeeded" and w, timeout_s=60,
                         what=f"{name} Succeeded (operator log: {operator.output()})")
        assert item["status"]["result"] == expected


def test_model_keys_come_from_secrets_and_stay_out_of_nats_and_status(crds: Any, operator: Operator,
                                                                      k8s_namespace: str, nats_url: str) -> None:
    import asyncio

    from station_runtime.client import LatticeClient
    from station_runtime.natsio.connect import NatsSettings
    from tests.support.in_thread import modelsim_in_thread

    with modelsim_in_thread(require_key=True) as sim:
        client.CoreV1Api(crds).create_namespaced_secret(k8s_namespace, {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm"}, "stringData": {"api-key": "sk-test"}})
        apply(crds, k8s_namespace, f"""\
apiVersion: {GROUP}/{VERSION}
kind: Agent
metadata: {{name: assistant}}
spec:
  model: {{provider: openai, name: echo, baseUrl: "{sim.openai_base_url}", stream: false,
           apiKeySecretRef: {{name: llm, key: api-key}}}}
---
apiVersion: {GROUP}/{VERSION}
kind: Station
metadata: {{name: llm-worker}}
spec: {{replicas: 1}}
---
apiVersion: {GROUP}/{VERSION}
kind: WorkItem
metadata: {{name: ask}}
spec: {{agent: assistant, input: what is a lattice}}
""")
        item = wait_sync(lambda: (w := get(crds, k8s_namespace, "workitems", "ask"))
                         and (w.get("status") or {}).get("phase") in ("Succeeded", "Failed") and w, timeout_s=60,
                         what=f"WorkItem ask finished (operator log: {operator.output()})")
        assert item["status"]["phase"] == "Succeeded", item["status"]
        assert item["status"]["result"] == "what is a lattice"
        assert sim.requests[0].headers["authorization"] == "Bearer sk-test"

        async def everything_in_nats() -> str:
            async with LatticeClient(NatsSettings(url=nats_url), k8s_namespace) as lc:
                agents = await lc.agents()
                events = [e.model_dump_json() async for e in lc.events()]
            return " ".join([a.model_dump_json() for a in agents] + events)

        in_nats = asyncio.run(everything_in_nats())
        assert "assistant" in in_nats and "sk-test" not in in_nats
        agent = get(crds, k8s_namespace, "agents", "assistant")
        assert "sk-test" not in str(agent) and "sk-test" not in operator.output()


def test_a_tool_server_reaches_its_agents_stations_with_its_secret_and_its_tools_reach_status(
        crds: Any, operator: Operator, k8s_namespace: str) -> None:
    from station_runtime.modelsim import Script, Step, ToolCallStep
    from tests.support import mcp_tools_server
    from tests.support.in_thread import in_thread, modelsim_in_thread

    adder = Script("adder", (Step(tool_calls=(ToolCallStep("add", {"a": 40, "b": 2}),)), Step(text="{tool_results}")))
    with modelsim_in_thread(scripts=[adder]) as sim, \
            in_thread(lambda: mcp_tools_server.serve_http(require_header=("Authorization", "Bearer t0ken"))) as url:
        client.CoreV1Api(crds).create_namespaced_secret(k8s_namespace, {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mcp"},
            "stringData": {"token": "Bearer t0ken"}})
        apply(crds, k8s_namespace, f"""\
apiVersion: {GROUP}/{VERSION}
kind: ToolServer
metadata: {{name: calc}}
spec:
  url: "{url}"
  headers: {{Authorization: {{secretRef: {{name: mcp, key: token}}}}}}
---
apiVersion: {GROUP}/{VERSION}
kind: Agent
metadata: {{name: mathbot}}
spec:
  model: {{provider: openai, name: adder, baseUrl: "{sim.openai_base_url}"}}
  tools: [{{server: calc, allow: [add, echo]}}]
""")
        # The header's Secret is in the model-keys Secret before the station pods start (they mount it).
        def model_keys() -> dict[str, str]:
            found = client.CoreV1Api(crds).list_namespaced_secret(k8s_namespace,
                                                                  field_selector="metadata.name=lattice-model-keys")
            return dict((found.items[0].data or {}) if found.items else {})

        wait_sync(lambda: "mcp.token" in model_keys(), timeout_s=30,
                  what=f"the MCP token in lattice-model-keys (operator log: {operator.output()})")
        apply(crds, k8s_namespace, f"apiVersion: {GROUP}/{VERSION}\nkind: Station\nmetadata: {{name: tools}}\n"
                                   "spec: {replicas: 1}\n")
        agent = wait_sync(lambda: (a := get(crds, k8s_namespace, "agents", "mathbot"))
                          and (a.get("status") or {}).get("tools") and a, timeout_s=60,
                          what=f"mathbot's discovered tools in status (operator log: {operator.output()})")
        assert agent["status"]["tools"] == [{"name": "add", "source": "calc"}, {"name": "echo", "source": "calc"}]
        assert agent["status"]["toolsSummary"] == "2 tools" and agent["status"]["ready"] is True
        server = wait_sync(lambda: (s := get(crds, k8s_namespace, "toolservers", "calc"))
                           and (s.get("status") or {}).get("tools") and s, timeout_s=30, what="calc's status")
        assert server["status"]["agents"] == ["mathbot"] and server["status"]["tools"] == ["add", "echo"]
        assert condition(server, "Ready") == "True"
        assert "t0ken" not in str(agent) + str(server) and "t0ken" not in operator.output()

        apply(crds, k8s_namespace, f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata: {{name: sum}}\n"
                                   "spec: {agent: mathbot, input: what is 40 + 2}\n")
        item = wait_sync(lambda: (w := get(crds, k8s_namespace, "workitems", "sum"))
                         and (w.get("status") or {}).get("phase") in ("Succeeded", "Failed") and w, timeout_s=60,
                         what=f"WorkItem sum finished (operator log: {operator.output()})")
        assert item["status"]["phase"] == "Succeeded", item["status"]
        assert item["status"]["result"] == "42"


def test_scaling_and_deleting_a_station_and_the_ttl_of_finished_work_items(
        crds: Any, kube_cluster: KubeCluster, nats_url: str, k8s_namespace: str, tmp_path: Path) -> None:
    op = Operator(kube_cluster.kubeconfig, nats_url, k8s_namespace, tmp_path / "operator.log")
    op.env["LATTICE_WORKITEM_TTL"] = "1"
    op.env["LATTICE_WORK_RESYNC"] = "1"
    op.start()
    try:
        apply(crds, k8s_namespace, MANIFESTS)
        wait_sync(lambda: condition(get(crds, k8s_namespace, "stations", "worker"), "Ready") == "True",
                  timeout_s=60, what="Station Ready")
        client.CustomObjectsApi(crds).patch_namespaced_custom_object(
            GROUP, VERSION, k8s_namespace, "stations", "worker", {"spec": {"replicas": 3}})
        scaled = wait_sync(lambda: (s := get(crds, k8s_namespace, "stations", "worker"))
                           and (s.get("status") or {}).get("readyReplicas") == 3 and s, timeout_s=60,
                           what=f"3 stations after scaling up (operator log: {op.output()})")
        assert sorted(scaled["status"]["stations"]) == ["worker-0", "worker-1", "worker-2"]
        apply(crds, k8s_namespace, f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata: {{name: brief}}\n"
                                   "spec: {agent: echo, input: x}\n")

        def gone() -> bool:
            names = [w["metadata"]["name"] for w in client.CustomObjectsApi(crds).list_namespaced_custom_object(
                GROUP, VERSION, k8s_namespace, "workitems")["items"]]
            return "brief" not in names

        wait_sync(gone, timeout_s=30, what="the finished WorkItem to be deleted after its TTL")
        client.CustomObjectsApi(crds).delete_namespaced_custom_object(GROUP, VERSION, k8s_namespace, "stations",
                                                                      "worker")
        # Garbage collection removes the StatefulSet, its pods get SIGTERM and drain: they leave the lattice.
        wait_sync(lambda: not [r for r in _station_records(nats_url, k8s_namespace)
                               if r.station_id.startswith("worker-")], timeout_s=60,
                  what="the deleted Station's stations to leave the lattice")
    finally:
        op.stop()


def test_a_work_items_trace_starts_at_the_resource_and_reaches_the_station_pod(
        kube_cluster: KubeCluster, crds: Any, nats_url: str, k8s_namespace: str, tmp_path: Path) -> None:
    # The operator (and through it every station pod) sends traces to a real Collector; the WorkItem carries the
    # traceparent of whoever applied it, so its trace continues that one.
    from station_runtime.telemetry import tracing
    from tests.support.controlplane import free_ports
    from tests.support.telemetry import Collector, tree

    collector = Collector(tmp_path).start()
    [metrics_port] = free_ports(1)
    op = Operator(kube_cluster.kubeconfig, nats_url, k8s_namespace, tmp_path / "operator.log")
    op.env.update(collector.env(LATTICE_METRICS_PORT=str(metrics_port)))
    op.start()
    applied_by = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    try:
        apply(crds, k8s_namespace, MANIFESTS)
        apply(crds, k8s_namespace, f"apiVersion: {GROUP}/{VERSION}\nkind: WorkItem\nmetadata:\n  name: traced\n"
                                   f"  annotations: {{lattice.station.dev/traceparent: '{applied_by}'}}\n"
                                   "spec: {agent: echo, input: 'trace me'}\n")
        wait_sync(lambda: (get(crds, k8s_namespace, "workitems", "traced").get("status") or {})
                  .get("phase") == "Succeeded", timeout_s=60,
                  what=f"WorkItem traced Succeeded (operator log: {op.output()})")
        trace_id = tracing.trace_id(applied_by)
        assert trace_id is not None

        def whole() -> list[Any] | None:
            spans = collector.trace(trace_id)
            return spans if {"lattice.workitem.reconcile", "lattice.submit", "lattice.run"} <= {
                s.name for s in spans} else None

        spans = wait_sync(whole, timeout_s=30, what="the WorkItem's trace at the Collector")
        print(f"\ntrace {trace_id}:\n{tree(spans)}")
        [reconcile] = [s for s in spans if s.name == "lattice.workitem.reconcile"]
        assert reconcile.service == "lattice-operator" and reconcile.parent_id == "00f067aa0ba902b7"
        assert reconcile.attributes["lattice.workitem"] == "traced"
        [submit] = [s for s in spans if s.name == "lattice.submit"]
        assert submit.parent_id == reconcile.span_id
        [run] = [s for s in spans if s.name == "lattice.run"]
        assert run.service == "lattice-station" and run.attributes["lattice.station.id"] in ("worker-0", "worker-1")
        # The operator serves its metrics too: the WorkItem's work is counted there.
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert f'lattice_work_submitted_total{{agent="echo",org="{k8s_namespace}"}}' in text
    finally:
        op.stop()
        collector.stop()


def test_a_work_item_waiting_for_a_person_shows_it_and_an_annotation_answers(
        crds: Any, operator: Operator, k8s_namespace: str) -> None:
    from station_runtime.modelsim import Script, Step, ToolCallStep
    from tests.support.in_thread import modelsim_in_thread

    asking = Script("asking", (Step(tool_calls=(ToolCallStep("ask_user", {"question": "which colour?"}),)),
                               Step(text="painted {tool_results}")))
    with modelsim_in_thread(scripts=[asking]) as sim:
        apply(crds, k8s_namespace, f"""\
apiVersion: {GROUP}/{VERSION}
kind: Agent
metadata: {{name: painter}}
spec:
  model: {{provider: openai, name: asking, baseUrl: "{sim.openai_base_url}"}}
  tools: [{{askUser: true}}]
---
apiVersion: {GROUP}/{VERSION}
kind: Station
metadata: {{name: painters}}
spec: {{replicas: 1}}
---
apiVersion: {GROUP}/{VERSION}
kind: WorkItem
metadata: {{name: paint}}
spec: {{agent: painter, input: paint the fence}}
""")
        item = wait_sync(lambda: (w := get(crds, k8s_namespace, "workitems", "paint"))
                         and (w.get("status") or {}).get("phase") == "AwaitingInput" and w, timeout_s=90,
                         what=f"WorkItem paint waiting for an answer (operator log: {operator.output()})")
        assert "an answer to: which colour?" in item["status"]["waitingFor"]
        assert "lattice.station.dev/reply" in item["status"]["waitingFor"] and item["status"].get("station") is None
        client.CustomObjectsApi(crds).patch_namespaced_custom_object(
            GROUP, VERSION, k8s_namespace, "workitems", "paint",
            {"metadata": {"annotations": {"lattice.station.dev/reply": "green"}}})
        done = wait_sync(lambda: (w := get(crds, k8s_namespace, "workitems", "paint"))
                         and (w.get("status") or {}).get("phase") in ("Succeeded", "Failed") and w, timeout_s=60,
                         what=f"WorkItem paint finished (operator log: {operator.output()})")
        assert done["status"]["phase"] == "Succeeded" and done["status"]["result"] == "painted green", done["status"]
        assert done["status"].get("waitingFor") is None
        annotations = get(crds, k8s_namespace, "workitems", "paint")["metadata"].get("annotations") or {}
        assert "lattice.station.dev/reply" not in annotations  # applied, then removed

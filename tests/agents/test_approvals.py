"""A person in the loop: a tool call marked requireApproval suspends the run before it runs (AwaitingApproval, no
station slot held, an event naming the call); `lattice work approve|reject` resumes it on any station; `ask_user`
waits for `lattice work reply`; a deadline decides when nobody does; a decision for a delegating parent reaches
its waiting child; and a pending approval survives a full `lattice up` restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from station_runtime.api.models import WorkItemSpec
from station_runtime.client import LatticeClient
from station_runtime.contract.messages import WorkPhase, WorkRecord
from station_runtime.executors.tools.lattice import child_of
from station_runtime.local.auth import admin_creds_path
from station_runtime.modelsim import ModelSim, Step, ToolCallStep
from station_runtime.natsio.connect import NatsSettings
from station_runtime.work.controller import WorkController
from tests.agents.test_durable_runs import effects, requests_by_turn
from tests.support.agent_tools import EFFECTS_ENV
from tests.support.agents_llm import llm_agent, script
from tests.support.cli import lattice
from tests.support.lattice import running_station
from tests.support.waiting import eventually, wait_sync

pytestmark = pytest.mark.timeout(120)
EFFECT = "tests.support.agent_tools:effect"


async def _phase(client: LatticeClient, work_id: str, phase: WorkPhase) -> WorkRecord | None:
    record = await client.get_work(work_id)
    return record if record is not None and record.phase == phase else None


async def _events(client: LatticeClient, work_id: str, kind: str) -> list[Any]:
    return [e async for e in client.events(category="work", work_id=work_id) if e.short_type == f"work.{kind}"]


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.txt"
    monkeypatch.setenv(EFFECTS_ENV, str(path))
    return path


async def test_a_call_that_needs_approval_waits_holding_nothing_and_runs_once_approved(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, ledger: Path) -> None:
    script(sim, "careful", Step(tool_calls=(ToolCallStep("effect", {"n": 7}, id="pay"),)), "paid: {tool_results}")
    await client.put_agent(llm_agent(sim, "openai", "careful", "payer",
                                     tools=[{"function": EFFECT, "requireApproval": True}]))
    async with WorkController(await client.org_work(), interval_s=0.2), \
            running_station(nats_url, org, "s1") as s1, running_station(nats_url, org, "s2") as s2:
        await client.wait_for_stations(2, agent="payer", timeout_s=20)
        await client.submit(WorkItemSpec(agent="payer", input="pay seven"), work_id="pay-7")
        waiting = await eventually(lambda: _phase(client, "pay-7", WorkPhase.AWAITING_APPROVAL), timeout_s=20,
                                   what="the run to wait for approval")
        assert waiting.waiting is not None and waiting.waiting.tool == "effect"
        assert waiting.waiting.arguments == '{"n": 7}' and waiting.waiting.key == "pay-7/1"
        assert waiting.station_id is None and s1.slots.load == 0 and s2.slots.load == 0  # nothing held
        assert effects(ledger) == []
        (asked,) = await _events(client, "pay-7", "approval_requested")
        assert asked.data["tool"] == "effect" and asked.data["key"] == "pay-7/1"
        shown = await lattice("--nats", nats_url, "--org", org, "work", "get", "pay-7")
        assert "AwaitingApproval" in shown.stdout and "lattice work approve|reject pay-7" in shown.stdout
        approved = await lattice("--nats", nats_url, "--org", org, "work", "approve", "pay-7", "--reason", "ok")
        assert approved.code == 0, approved.stderr
        done = await client.wait_work("pay-7", timeout_s=30)
    assert done.phase == WorkPhase.SUCCEEDED and done.result == "paid: effect 7 done"
    assert effects(ledger) == ["7 pay-7/1"]
    assert requests_by_turn(sim, "careful") == {1: 1, 2: 1}  # the first turn was not asked again
    assert done.decisions["pay-7/1"].approved and done.decisions["pay-7/1"].reason == "ok"
    assert done.retries == 0 and done.usage is not None and done.usage.model_calls == 2
    assert [e.data["approved"] for e in await _events(client, "pay-7", "approval_decided")] == [True]


async def test_a_rejected_call_never_runs_and_the_model_is_told_why(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, ledger: Path) -> None:
    script(sim, "careful-no", Step(tool_calls=(ToolCallStep("effect", {"n": 1}, id="x"),)), "{tool_results}")
    await client.put_agent(llm_agent(sim, "openai", "careful-no", "asker", require_approval=True,
                                     tools=[{"function": EFFECT}]))
    async with WorkController(await client.org_work(), interval_s=0.2), running_station(nats_url, org, "s1"):
        await client.wait_for_stations(1, agent="asker", timeout_s=20)
        await client.submit(WorkItemSpec(agent="asker", input="go"), work_id="nope")
        await eventually(lambda: _phase(client, "nope", WorkPhase.AWAITING_APPROVAL), timeout_s=20,
                         what="the run to wait")
        with pytest.raises(Exception, match="approve or reject it"):
            await client.decide("nope", approved=True, reply="yes")
        await client.decide("nope", approved=False, reason="too risky", by="ops")
        done = await client.wait_work("nope", timeout_s=30)
    assert done.phase == WorkPhase.SUCCEEDED and "not approved (too risky, by ops)" in str(done.result)
    assert effects(ledger) == []


async def test_ask_user_waits_for_a_reply_and_a_deadline_decides_when_nobody_does(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim) -> None:
    ask = ToolCallStep("ask_user", {"question": "Which colour?"}, id="q")
    script(sim, "curious", Step(tool_calls=(ask,)), "you said: {tool_results}")
    await client.put_agent(llm_agent(sim, "openai", "curious", "curious", tools=[{"askUser": True}]))
    await client.put_agent(llm_agent(sim, "openai", "curious", "impatient", tools=[{"askUser": True}],
                                     approval_timeout_seconds=0.5))
    async with WorkController(await client.org_work(), interval_s=0.2), running_station(nats_url, org, "s1"):
        await client.wait_for_stations(1, agent="impatient", timeout_s=20)
        await client.submit(WorkItemSpec(agent="curious", input="paint"), work_id="paint")
        await client.submit(WorkItemSpec(agent="impatient", input="paint"), work_id="hurry")
        asked = await eventually(lambda: _phase(client, "paint", WorkPhase.AWAITING_INPUT), timeout_s=20,
                                 what="the question")
        assert asked.waiting is not None and asked.waiting.question == "Which colour?"
        replied = await lattice("--nats", nats_url, "--org", org, "work", "reply", "paint", "blue")
        assert replied.code == 0, replied.stderr
        done = await client.wait_work("paint", timeout_s=30)
        hurried = await client.wait_work("hurry", timeout_s=30)
    assert done.phase == WorkPhase.SUCCEEDED and done.result == "you said: blue"
    assert hurried.phase == WorkPhase.SUCCEEDED and "did not answer (no decision by the deadline)" in str(
        hurried.result)
    assert [e.short_type for e in await _events(client, "hurry", "wait_timed_out")] == ["work.wait_timed_out"]


async def test_a_decision_for_a_delegating_parent_reaches_its_waiting_child(
        client: LatticeClient, nats_url: str, org: str, sim: ModelSim, ledger: Path) -> None:
    child = child_of("boss", 1)
    script(sim, "delegating", Step(tool_calls=(ToolCallStep("lattice_submit", {"agent": "worker", "input": "x"},
                                                            id="s"),)),
           Step(tool_calls=(ToolCallStep("lattice_await", {"work_ids": [child]}, id="w"),)), "{tool_results}")
    script(sim, "working", Step(tool_calls=(ToolCallStep("effect", {"n": 3}, id="e"),)), "worked")
    await client.put_agent(llm_agent(sim, "openai", "delegating", "boss-agent",
                                     tools=[{"lattice": ["submit", "await"]}]))
    await client.put_agent(llm_agent(sim, "openai", "working", "worker",
                                     tools=[{"function": EFFECT, "requireApproval": True}]))
    async with WorkController(await client.org_work(), interval_s=0.2), running_station(nats_url, org, "s1"):
        await client.wait_for_stations(1, agent="worker", timeout_s=20)
        await client.submit(WorkItemSpec(agent="boss-agent", input="delegate"), work_id="boss")
        await eventually(lambda: _phase(client, child, WorkPhase.AWAITING_APPROVAL), timeout_s=20,
                         what="the child to wait for approval")
        decided = await client.decide("boss", approved=True, by="ops")
        assert decided.work_id == child
        done = await client.wait_work("boss", timeout_s=30)
    assert done.phase == WorkPhase.SUCCEEDED and "worked" in str(done.result)
    assert effects(ledger) == [f"3 {child}/1"]


class Up:
    """`lattice up` on a manifest directory and a state dir, stopped and started again at will."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> Up:
        self.runs += 1
        self.current = self.tmp / "state" / "station-lattice" / "current.json"
        self.current.unlink(missing_ok=True)
        log = open(self.tmp / f"up-{self.runs}.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "station_runtime", "--org", "local", "up", "-f", str(self.tmp / "manifests"),
             "--state-dir", str(self.tmp / "lattice"), "--port", "0", "--heartbeat-interval", "0.5"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def url(self) -> str:
        import json

        return str(wait_sync(lambda: self.current.exists() and json.loads(self.current.read_text())["url"],
                             timeout_s=30, what="lattice up to say where it listens"))

    def settings(self) -> NatsSettings:
        """The URL and the org's admin creds, which `lattice up` keeps in its state dir."""
        return NatsSettings(url=self.url(), creds_file=admin_creds_path(self.tmp / "lattice", "local"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _up(tmp_path: Path, agent: Any, ledger: Path) -> Up:
    (tmp_path / "manifests").mkdir()
    docs = [{"apiVersion": "lattice.station.dev/v1alpha1", "kind": "Station", "metadata": {"name": "worker"},
             "spec": {"replicas": 1}},
            {"apiVersion": "lattice.station.dev/v1alpha1", "kind": "Agent", "metadata": {"name": agent.name},
             "spec": agent.spec.model_dump(mode="json", by_alias=True, exclude_none=True)}]
    (tmp_path / "manifests" / "lattice.yaml").write_text(yaml.safe_dump_all(docs))
    return Up(tmp_path, {"TEST_MODEL_KEY": os.environ["TEST_MODEL_KEY"], EFFECTS_ENV: str(ledger)})


@pytest.fixture
def up(tmp_path: Path, sim: ModelSim, ledger: Path) -> Iterator[Up]:
    script(sim, "restartable", Step(tool_calls=(ToolCallStep("effect", {"n": 9}, id="r"),)), "done")
    u = _up(tmp_path, llm_agent(sim, "openai", "restartable", "survivor",
                                tools=[{"function": EFFECT, "requireApproval": True}]), ledger)
    yield u
    u.stop()


@pytest.mark.fault
async def test_an_approval_pending_across_a_full_lattice_up_restart(up: Up, ledger: Path) -> None:
    async with LatticeClient(up.start().settings(), "local") as client:
        await client.wait_for_stations(1, agent="survivor", timeout_s=60)
        await client.submit(WorkItemSpec(agent="survivor", input="go"), work_id="across")
        await eventually(lambda: _phase(client, "across", WorkPhase.AWAITING_APPROVAL), timeout_s=30,
                         what="the run to wait for approval")
    up.stop()  # NATS, the controller and the station all go
    url = up.start().url()
    async with LatticeClient(up.settings(), "local") as client:
        waiting = await client.get_work("across")
        assert waiting is not None and waiting.phase == WorkPhase.AWAITING_APPROVAL
        await client.wait_for_stations(1, agent="survivor", timeout_s=60)
        approved = await lattice("--nats", url, "--org", "local", "--creds", str(up.settings().creds_file), "work",
                                 "approve", "across")
        assert approved.code == 0, approved.stderr
        done = await client.wait_work("across", timeout_s=60)
    assert done.phase == WorkPhase.SUCCEEDED and done.result == "done"
    assert effects(ledger) == ["9 across/1"]


def _nats_pid(up: Up) -> int | None:
    found = list((up.tmp / "lattice" / "nats" / "ports").glob("*.ports"))
    return int(found[0].stem.rsplit("_", 1)[1]) if found else None


@pytest.mark.fault
async def test_a_run_goes_on_through_a_kill_9_of_nats_server_and_nothing_is_lost(
        tmp_path: Path, sim: ModelSim, ledger: Path) -> None:
    # Four side effects, one per turn; turn 3 streams slowly, and nats-server is SIGKILLed (fsync on: the
    # default of `lattice up`) while it does. `lattice up` restarts it on the same store; the station's appends
    # and writes wait for it and land; the run finishes on its first attempt, each effect once.
    steps = [Step(tool_calls=(ToolCallStep("effect", {"n": n}, id=f"c{n}"),),
                  text=" ".join(["pondering"] * 16) if n == 3 else "") for n in (1, 2, 3, 4)]
    script(sim, "through-outage", *steps, "four done", tokens_per_s=4)
    up = _up(tmp_path, llm_agent(sim, "openai", "through-outage", "steady", tools=[{"function": EFFECT}]),
             ledger)
    try:
        await _two_effects_in(up, "steady", ledger)
        old = _nats_pid(up)
        assert old is not None and len(effects(ledger)) == 2  # the kill comes mid-run (turn 3 streams ~4 s)
        os.kill(old, signal.SIGKILL)
        wait_sync(lambda: (pid := _nats_pid(up)) is not None and pid != old, timeout_s=30,
                  what="nats-server restarted by lattice up")
        async with LatticeClient(up.settings(), "local") as client:
            done = await client.wait_work("steady", timeout_s=90)
            journal = await client.journal("steady")
    finally:
        up.stop()
    assert done.phase == WorkPhase.SUCCEEDED and done.result == "four done", done.reason
    assert effects(ledger) == [f"{n} steady/{n}" for n in (1, 2, 3, 4)]
    assert [e.n for e in journal] == list(range(1, 10))  # 5 turns, 4 results: nothing lost, nothing twice
    assert done.attempt == 1 and done.usage is not None and done.usage.model_calls == 5


@pytest.mark.fault
async def test_a_run_resumes_mid_loop_after_lattice_up_is_killed_and_started_again(
        tmp_path: Path, sim: ModelSim, ledger: Path) -> None:
    # `lattice up` SIGKILLed with everything it started (NATS, controller, station) while turn 3 streams; started
    # again on the same state dir, its station (the same id) finds its run and resumes it from the journal.
    steps = [Step(tool_calls=(ToolCallStep("effect", {"n": n}, id=f"u{n}"),),
                  text=" ".join(["pondering"] * 16) if n == 3 else "") for n in (1, 2, 3)]
    script(sim, "up-again", *steps, "three done", tokens_per_s=4)
    up = _up(tmp_path, llm_agent(sim, "openai", "up-again", "phoenix", tools=[{"function": EFFECT}]), ledger)
    try:
        await _two_effects_in(up, "phoenix", ledger)
        assert up.proc is not None and len(effects(ledger)) == 2
        up.proc.send_signal(signal.SIGKILL)  # its children die with it
        up.proc.wait(10)
        async with LatticeClient(up.start().settings(), "local") as client:
            done = await client.wait_work("phoenix", timeout_s=90)
            journal = await client.journal("phoenix")
    finally:
        up.stop()
    assert done.phase == WorkPhase.SUCCEEDED and done.result == "three done", done.reason
    assert effects(ledger) == [f"{n} phoenix/{n}" for n in (1, 2, 3)]
    assert requests_by_turn(sim, "up-again") == {1: 1, 2: 1, 3: 2, 4: 1}  # only the unfinished turn again
    assert [e.kind.value for e in journal].count("attempt") == 1


async def _two_effects_in(up: Up, agent: str, ledger: Path) -> None:
    """Start `lattice up`, submit work ``agent`` (of agent ``agent``) and wait until it has had two effects."""
    async with LatticeClient(up.start().settings(), "local") as client:
        await client.wait_for_stations(1, agent=agent, timeout_s=60)
        await client.submit(WorkItemSpec(agent=agent, input="go", max_retries=2), work_id=agent)
        await eventually(lambda: _lines(ledger, 2), timeout_s=30, what="two effects")


async def _lines(path: Path, count: int) -> bool:
    return len(effects(path)) >= count

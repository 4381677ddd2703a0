"""Pure operator logic: org resolution, child objects, status and conditions."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from station_operator import builders
from station_operator.conditions import condition, merge
from station_operator.credplan import plan_station_creds
from station_operator.orgs import LIMITS_ANNOTATION, ORG_LABEL, OrgError, account_limits, resolve_org

from station_runtime.api.models import (
    Agent,
    AgentSpec,
    ModelSpec,
    ObjectMeta,
    SecretKeyRef,
    Station,
    StationSpec,
    ToolServer,
    WorkItem,
    WorkItemSpec,
    resolve_tool_servers,
)
from station_runtime.api.status import MAX_STATUS_RESULT_CHARS
from station_runtime.contract.messages import ErrorCode, StationRecord, Usage, WorkError, WorkPhase, WorkRecord
from station_runtime.contract.selectors import parse_selector
from station_runtime.contract.specs import ToolServerSpec, ValueSource
from station_runtime.natsauth import AccountLimits, OperatorKeys, OrgAuthority, user_public_key

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_org_comes_from_the_namespace_never_from_the_spec() -> None:
    assert resolve_org("team-a", {}, None) == "team-a"
    assert resolve_org("ns", {ORG_LABEL: "acme"}, None) == "acme"
    assert resolve_org("ns", {ORG_LABEL: "acme"}, "acme") == "acme"
    with pytest.raises(OrgError, match=r"spec\.org is 'evil' but namespace 'ns' belongs to org 'acme'"):
        resolve_org("ns", {ORG_LABEL: "acme"}, "evil")
    with pytest.raises(OrgError, match="set the namespace label"):
        resolve_org("ns", {ORG_LABEL: "bad.org"}, None)


def test_the_orgs_nats_limits_come_from_its_namespace_annotation() -> None:
    assert account_limits("ns", {}) == AccountLimits()
    assert account_limits("ns", {LIMITS_ANNOTATION: '{"connections": 50, "jetstreamDiskBytes": 4294967296, '
                                                    '"streams": -1, "consumers": 200}'}) == AccountLimits(
        conn=50, disk_storage=4 << 30, consumer=200)
    for bad, said in (("{nope", "is not JSON"), ("[1]", "must be a JSON object"),
                      ('{"conn": 5}', "unknown limits ['conn']: use connections"),
                      ('{"connections": "5"}', "connections must be a whole number"),
                      ('{"connections": true}', "connections must be a whole number"),
                      ('{"connections": 0}', "conn must be -1 (unlimited) or positive"),
                      ('{"streams": 3}', "streams must be at least 7"),
                      ('{"payloadBytes": 4096}', "below the lattice's largest message")):
        with pytest.raises(OrgError, match=re.escape(said)):
            account_limits("ns", {LIMITS_ANNOTATION: bad})


def station(replicas: int = 2, **spec: object) -> Station:
    return Station(metadata=ObjectMeta(name="worker", generation=3),
                   spec=StationSpec(replicas=replicas, **spec))  # type: ignore[arg-type]


def test_the_stateful_set_carries_the_station_configuration() -> None:
    s = station(capabilities=["text"], labels={"zone": "a"}, max_concurrency=7,
                agent_selector=parse_selector("team=docs"))
    pod = builders.StationPodConfig(image="img:1", nats_url="nats://nats:4222", health_port=8080)
    sts = builders.stateful_set(s, "acme", pod)
    assert sts["spec"]["replicas"] == 2 and sts["kind"] == "StatefulSet"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["LATTICE_ORG"] == "acme" and env["LATTICE_NATS_URL"] == "nats://nats:4222"
    assert env["LATTICE_STATION_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["LATTICE_CAPABILITIES"] == "text" and env["LATTICE_LABELS"] == "zone=a"
    assert env["LATTICE_MAX_CONCURRENCY"] == "7" and "team" in env["LATTICE_AGENT_SELECTOR_JSON"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    assert "LATTICE_NATS_CREDS" not in env and "LATTICE_STATE_REPLICAS" not in env
    jwt = builders.stateful_set(s, "acme", builders.StationPodConfig(image="i", nats_url="n", jwt=True,
                                                                      health_port=None, state_replicas=3))
    jwt_c = jwt["spec"]["template"]["spec"]["containers"][0]
    jwt_env = {e["name"]: e.get("value") for e in jwt_c["env"]}
    assert jwt_env["LATTICE_NATS_CREDS"] == "/etc/lattice/nats/$(LATTICE_STATION_ID).creds"
    assert jwt_env["LATTICE_NATS_INBOX_PREFIX"] == "_INBOX_$(LATTICE_STATION_ID)"
    assert jwt_env["LATTICE_STATE_REPLICAS"] == "3"  # the operator's own: a station that creates stores agrees
    assert "readinessProbe" not in jwt_c
    assert builders.station_ids(s) == ["worker-0", "worker-1"]


def record(sid: str, *, age_s: float = 0.0, load: int = 1, agents: tuple[str, ...] = ("echo",)) -> StationRecord:
    return StationRecord(org="acme", station_id=sid, capacity=4, load=load, agents=list(agents),
                         heartbeat_interval_s=1.0, started_at=NOW, last_heartbeat=NOW - timedelta(seconds=age_s))


def test_station_status_counts_only_its_own_live_stations() -> None:
    records = [record("worker-0"), record("worker-1", age_s=10), record("worker-extra"), record("other-0")]
    status = builders.station_status(station(), "acme", records, ready_pods=2, now=NOW)
    assert status["readyReplicas"] == 1 and status["stations"] == ["worker-0"] and status["loadSummary"] == "1/4"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Degraded"]["status"] == "True"
    assert conds["Ready"]["observedGeneration"] == 3
    ok = builders.station_status(station(), "acme", [record("worker-0"), record("worker-1")], 2, NOW)
    assert {c["type"]: c["status"] for c in ok["conditions"]} == {"Accepted": "True", "Ready": "True",
                                                                  "Degraded": "False"}


def test_agent_secrets_become_key_files_and_never_values() -> None:
    agent = Agent(metadata=ObjectMeta(name="assistant", labels={"team": "docs"}), spec=AgentSpec(
        model=ModelSpec(provider="openai", name="m", api_key_secret_ref=SecretKeyRef(name="llm", key="api-key"))))
    definition = builders.agent_definition(agent, "acme")
    assert definition.spec.model.api_key_secret_ref is None
    assert definition.spec.model.api_key_file == "${LATTICE_MODEL_KEYS_DIR}/llm.api-key"
    assert definition.org == "acme" and definition.spec.org == "acme" and definition.labels == {"team": "docs"}
    status = builders.agent_status(agent, "acme", [record("s1", agents=("assistant",)), record("s2", agents=())],
                                   7, NOW)
    assert status["stations"] == 1 and status["ready"] is True and status["revision"] == 7


def test_an_agent_no_station_can_load_says_why_in_its_ready_condition() -> None:
    agent = Agent(metadata=ObjectMeta(name="broken"), spec=AgentSpec(model=ModelSpec(provider="python",
                                                                                     function="nope:run")))
    failing = record("s1", agents=()).model_copy(update={"agent_errors": {"broken": "cannot import module 'nope'"}})
    status = builders.agent_status(agent, "acme", [failing, record("s2", agents=())], 3, NOW)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["ready"] is False
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "LoadFailed",
                                                                     "s1: cannot import module 'nope'")


def test_work_item_status_mirrors_the_record_with_a_bounded_result() -> None:
    item = WorkItem(metadata=ObjectMeta(name="job", uid="abc-123", generation=1), spec=WorkItemSpec(agent="echo"))
    assert builders.work_id_for(item) == "wi-abc-123"
    rec = WorkRecord(org="acme", work_id="wi-abc-123", spec=item.spec, phase=WorkPhase.SUCCEEDED, attempt=2,
                     station_id="s1", result="y" * (MAX_STATUS_RESULT_CHARS + 10), finished_at=NOW)
    status = builders.work_item_status(item, "acme", rec)
    assert status["phase"] == "Succeeded" and status["attempts"] == 2 and status["station"] == "s1"
    assert len(status["result"]) == MAX_STATUS_RESULT_CHARS and status["resultTruncated"] is True
    failed = rec.model_copy(update={"phase": WorkPhase.FAILED, "result": None,
                                    "error": WorkError(code=ErrorCode.AGENT_ERROR, message="boom")})
    status = builders.work_item_status(item, "acme", failed)
    assert status["error"] == "boom" and status["errorCode"] == "agent_error"
    assert "inputTokens" not in status and "children" not in status
    spent = rec.model_copy(update={"usage": Usage(input_tokens=10, output_tokens=5, cost_usd=0.01,
                                                  delegated_cost_usd=0.02, tool_calls=3),
                                   "children": ["c1", "c2"], "parent_id": "p"})
    rich = builders.work_item_status(item, "acme", spent)
    assert (rich["inputTokens"], rich["outputTokens"], rich["costUsd"], rich["toolCalls"]) == (10, 5, 0.03, 3)
    assert rich["children"] == ["c1", "c2"] and rich["parent"] == "p"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "False"


def test_conditions_keep_their_transition_time_until_they_change() -> None:
    first = merge(None, [condition("Ready", False, "Missing")], now=NOW)
    later = merge(first, [condition("Ready", False, "Missing", "still")], now=NOW + timedelta(minutes=5))
    assert later[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    flipped = merge(later, [condition("Ready", True, "Live")], now=NOW + timedelta(minutes=9))
    assert flipped[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]


def test_mcp_secrets_of_an_agent_and_its_tool_servers_become_key_files() -> None:
    token = {"secretRef": {"name": "gh", "key": "token"}}
    agent = Agent(metadata=ObjectMeta(name="coder"), spec=AgentSpec.model_validate({
        "model": {"provider": "openai", "name": "m", "apiKeySecretRef": {"name": "llm", "key": "api-key"}},
        "tools": [{"server": "github"}, {"mcp": {"command": "mcp-files", "env": {"ROOT": "/data", "KEY": token}}}]}))
    github = ToolServer(metadata=ObjectMeta(name="github"), spec=ToolServerSpec.model_validate({
        "url": "https://mcp.example/", "headers": {"Authorization": token, "X-Team": {"value": "docs"}}}))
    unused = ToolServer(metadata=ObjectMeta(name="other"), spec=ToolServerSpec(command="x"))
    servers = resolve_tool_servers(agent, [github, unused])
    assert list(servers) == ["github"]
    definition = builders.agent_definition(agent, "acme", servers)
    headers = definition.tool_servers["github"].headers
    assert headers["Authorization"] == ValueSource(from_file="${LATTICE_MODEL_KEYS_DIR}/gh.token")
    assert headers["X-Team"] == ValueSource(value="docs")
    inline = definition.spec.tools[1].mcp
    assert inline is not None and inline.env == {"ROOT": "/data",
                                                 "KEY": ValueSource(from_file="${LATTICE_MODEL_KEYS_DIR}/gh.token")}
    assert [(r.name, r.key) for r in builders.secret_refs(agent, servers)] == [("gh", "token"), ("llm", "api-key")]
    assert "secretRef" not in definition.model_dump_json(by_alias=True, exclude_none=True)


def test_discovered_tools_reach_the_agents_and_the_tool_servers_status() -> None:
    agent = Agent(metadata=ObjectMeta(name="coder"), spec=AgentSpec.model_validate({
        "model": {"provider": "openai", "name": "m"}, "tools": [{"server": "github"}, {"lattice": ["submit"]}]}))
    hosting = record("s1", agents=("coder",)).model_copy(update={"agent_tools": {"coder": [
        "github:create_issue", "github:search", "lattice:lattice_submit"]}})
    status = builders.agent_status(agent, "acme", [hosting], 1, NOW)
    assert status["tools"] == [{"name": "create_issue", "source": "github"}, {"name": "search", "source": "github"},
                               {"name": "lattice_submit", "source": "lattice"}]
    assert status["toolsSummary"] == "3 tools"
    server = ToolServer(metadata=ObjectMeta(name="github", generation=2), spec=ToolServerSpec(url="https://x/"))
    ts = builders.tool_server_status(server, "acme", [agent], [hosting], NOW)
    assert (ts["agents"], ts["tools"], ts["transport"]) == (["coder"], ["create_issue", "search"], "http")
    assert {c["type"]: c["reason"] for c in ts["conditions"]}["Ready"] == "Discovered"
    down = record("s1", agents=()).model_copy(update={"agent_errors": {"coder": "tool server unavailable: 401"}})
    ts = builders.tool_server_status(server, "acme", [agent], [down], NOW)
    ready = next(c for c in ts["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], ready["message"]) == ("Unreachable", "coder: tool server unavailable: 401")
    alone = builders.tool_server_status(server, "acme", [], [hosting], NOW)
    assert next(c for c in alone["conditions"] if c["type"] == "Ready")["reason"] == "Unused"


def test_station_pods_get_where_traces_go_but_not_the_exporters_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    from station_operator import builders
    from station_operator.config import OperatorSettings

    from station_runtime.api.models import ObjectMeta, Station
    from station_runtime.contract.specs import StationSpec

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=vendor-secret")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "lattice-operator")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=operator-0")
    cfg = OperatorSettings.from_env()
    assert dict(cfg.station_otel_env) == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
                                          "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    station = Station(metadata=ObjectMeta(name="w"), spec=StationSpec())
    pod = builders.StationPodConfig(image="i", nats_url="nats://n:4222", otel_env=cfg.station_otel_env)
    env = {e["name"]: e.get("value") for e in
           builders.stateful_set(station, "o", pod)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4318" and "OTEL_EXPORTER_OTLP_HEADERS" not in env
    assert "vendor-secret" not in str(env)


def test_decision_annotations_and_what_a_waiting_work_item_shows() -> None:
    from station_runtime.contract.messages import Waiting, WorkPhase, WorkRecord
    from station_runtime.contract.specs import WorkItemSpec

    assert builders.decision_from(None) is None and builders.decision_from({"other": "x"}) is None
    assert builders.decision_from({builders.APPROVE_ANNOTATION: "fine"}) == (True, None, "fine")
    assert builders.decision_from({builders.REPLY_ANNOTATION: "blue"}) == (True, "blue", "")
    # Both given: the rejection wins (the safe side).
    assert builders.decision_from({builders.APPROVE_ANNOTATION: "", builders.REJECT_ANNOTATION: "no"}) == (
        False, None, "no")
    record = WorkRecord(org="o", work_id="w", spec=WorkItemSpec(agent="a"), phase=WorkPhase.AWAITING_APPROVAL,
                        waiting=Waiting(kind="approval", key="w/1", tool="pay", arguments='{"n": 1}'))
    assert builders.waiting_text(record) == (f'approval of pay({{"n": 1}}) (annotate {builders.APPROVE_ANNOTATION} '
                                             f"or {builders.REJECT_ANNOTATION})")
    assert builders.waiting_text(record.model_copy(update={"phase": WorkPhase.RUNNING})) is None


def test_station_creds_are_kept_renewed_near_their_end_issued_for_new_replicas_and_revoked_when_removed() -> None:
    authority = OrgAuthority(OperatorKeys.generate("t"))
    account = authority.org_account("acme")
    day = 86_400.0
    fresh = authority.issue_station_creds(account, "w-0", expires_at=int(NOW_S + day))
    ending = authority.issue_station_creds(account, "w-1", expires_at=int(NOW_S + day / 4))
    endless = authority.issue_station_creds(account, "w-2")
    removed = authority.issue_station_creds(account, "w-3", expires_at=int(NOW_S + day))
    existing = {"w-0.creds": fresh, "w-1.creds": ending, "w-2.creds": endless, "w-3.creds": removed,
                "w-4.creds": "garbage"}
    plan = plan_station_creds(existing, ["w-0", "w-1", "w-2", "w-5"], now=NOW_S, lifetime_s=day)
    assert plan.keep == {"w-0.creds": fresh}
    assert plan.issue == ["w-1", "w-2", "w-5"]
    assert plan.revoke == [user_public_key(removed)]  # the unreadable one authenticates nobody


NOW_S = NOW.timestamp()

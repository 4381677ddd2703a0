"""Pure builders: a resource in, Kubernetes objects or status out. No I/O here; handlers do the I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from station_runtime.api.models import Agent, Station, ToolServer, WorkItem, referenced_servers
from station_runtime.api.status import MAX_STATUS_RESULT_CHARS
from station_runtime.contract.messages import AgentDefinition, Payload, StationRecord, WorkPhase, WorkRecord
from station_runtime.contract.specs import McpServerSpec, SecretKeyRef, ValueSource
from station_runtime.natsio.state import REPLICAS_ENV
from station_runtime.routing import is_live

from .conditions import condition

MODEL_KEYS_SECRET = "lattice-model-keys"
MODEL_KEYS_DIR = "/etc/lattice/model-keys"
CREDS_DIR = "/etc/lattice/nats"


@dataclass(frozen=True)
class StationPodConfig:
    """What the operator decides for every station pod (from its own settings)."""

    image: str
    nats_url: str
    heartbeat_s: float = 2.0
    drain_timeout_s: float = 30.0
    health_port: int | None = 8080
    jwt: bool = False
    image_pull_policy: str = "IfNotPresent"
    #: OTEL_* variables for the station (where its traces go, how they are sampled).
    otel_env: tuple[tuple[str, str], ...] = ()
    #: LATTICE_STATE_REPLICAS for a station that creates its org's stores (no auth): the operator's own.
    state_replicas: int | None = None


def labels(kind: str, name: str, org: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "station-lattice", "app.kubernetes.io/component": kind,
            "app.kubernetes.io/managed-by": "station-lattice-operator", f"lattice.station.dev/{kind}": name,
            "lattice.station.dev/org": org}


def station_ids(station: Station) -> list[str]:
    """Station ids of a Station resource: its StatefulSet's pod names, stable across restarts (propulsion)."""
    return [f"{station.name}-{i}" for i in range(station.spec.replicas)]


def creds_secret_name(station: Station) -> str:
    return f"{station.name}-nats"


def service_account(station: Station, org: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": f"{station.name}-station", "labels": labels("station", station.name, org)},
            "automountServiceAccountToken": False}


def creds_secret(station: Station, org: str, creds: dict[str, str],
                 removed: Iterable[str] = ()) -> dict[str, Any]:
    """One creds file per station id (``{id}.creds``): each pod mounts all and uses its own. ``removed``: keys of
    the stored Secret to delete (creds of replicas scaled away), as nulls in the patch."""
    secret: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": creds_secret_name(station), "labels": labels("station", station.name, org)},
        "stringData": creds}
    if gone := sorted(set(removed) - set(creds)):
        secret["data"] = dict.fromkeys(gone)
    return secret


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def stateful_set(station: Station, org: str, pod: StationPodConfig) -> dict[str, Any]:
    """The station pods. A StatefulSet, not a Deployment: stable pod names are stable station ids, so a
    restarted pod resumes its own work (propulsion) and each id can get its own least-privilege NATS user."""
    spec = station.spec
    env: list[dict[str, Any]] = [
        {"name": "LATTICE_STATION_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        _env("LATTICE_ORG", org),
        _env("LATTICE_NATS_URL", pod.nats_url),
        _env("LATTICE_MAX_CONCURRENCY", str(spec.max_concurrency)),
        _env("LATTICE_HEARTBEAT_INTERVAL", str(pod.heartbeat_s)),
        _env("LATTICE_DRAIN_TIMEOUT", str(pod.drain_timeout_s)),
        _env("LATTICE_LOG_LEVEL", "INFO"),
        _env("LATTICE_MODEL_KEYS_DIR", MODEL_KEYS_DIR),
    ]
    env += [_env(name, value) for name, value in pod.otel_env]
    if pod.state_replicas is not None:
        env.append(_env(REPLICAS_ENV, str(pod.state_replicas)))
    if spec.capabilities:
        env.append(_env("LATTICE_CAPABILITIES", ",".join(spec.capabilities)))
    if spec.labels:
        env.append(_env("LATTICE_LABELS", ",".join(f"{k}={v}" for k, v in sorted(spec.labels.items()))))
    if spec.agent_selector is not None:
        env.append(_env("LATTICE_AGENT_SELECTOR_JSON", spec.agent_selector.model_dump_json(by_alias=True)))
    volumes: list[dict[str, Any]] = [
        {"name": "model-keys", "secret": {"secretName": MODEL_KEYS_SECRET, "optional": True}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]  # the root filesystem is read-only
    mounts: list[dict[str, Any]] = [{"name": "model-keys", "mountPath": MODEL_KEYS_DIR, "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"}]
    if pod.jwt:
        env += [_env("LATTICE_NATS_CREDS", f"{CREDS_DIR}/$(LATTICE_STATION_ID).creds"),
                _env("LATTICE_NATS_INBOX_PREFIX", "_INBOX_$(LATTICE_STATION_ID)")]
        volumes.append({"name": "nats-creds", "secret": {"secretName": creds_secret_name(station)}})
        mounts.append({"name": "nats-creds", "mountPath": CREDS_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": "station", "image": spec.image or pod.image, "imagePullPolicy": pod.image_pull_policy,
        "args": ["station", "run"], "env": env, "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    if pod.health_port is not None:
        env.append(_env("LATTICE_HEALTH_PORT", str(pod.health_port)))
        container["ports"] = [{"name": "health", "containerPort": pod.health_port}]
        container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 5}
        container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10,
                                      "failureThreshold": 6}
    selector = {"lattice.station.dev/station": station.name}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": station.name, "labels": labels("station", station.name, org)},
        "spec": {
            "replicas": spec.replicas, "serviceName": station.name, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**labels("station", station.name, org), **selector}},
                "spec": {
                    "serviceAccountName": f"{station.name}-station", "automountServiceAccountToken": False,
                    # Enough to drain: running work finishes or is handed back before the kill.
                    "terminationGracePeriodSeconds": int(pod.drain_timeout_s) + 10,
                    # Pod Security "restricted".
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container], "volumes": volumes,
                },
            },
        },
    }


# --- status -------------------------------------------------------------------------------------------------


def _owned(station: Station, record: StationRecord) -> bool:
    return re.fullmatch(rf"{re.escape(station.name)}-\d+", record.station_id) is not None


def station_status(station: Station, org: str, records: Sequence[StationRecord], ready_pods: int,
                   now: datetime) -> dict[str, Any]:
    """Pure: a Station's status from lattice presence (the truth about stations) and its pods."""
    mine = sorted((r for r in records if _owned(station, r) and is_live(r, now)), key=lambda r: r.station_id)
    want = station.spec.replicas
    live = len(mine)
    load, capacity = sum(r.load for r in mine), sum(r.capacity for r in mine)
    gen = station.metadata.generation
    if live >= want:
        ready = condition("Ready", True, "StationsLive", f"{live}/{want} station(s) heartbeating", gen)
        degraded = condition("Degraded", False, "AllLive", "", gen)
    else:
        ready = condition("Ready", want == 0, "StationsMissing" if want else "ScaledToZero",
                          f"{live}/{want} station(s) heartbeating; {ready_pods} pod(s) ready", gen)
        degraded = condition("Degraded", live > 0, "PartiallyLive" if live else "NoneLive",
                             f"{want - live} station(s) not in the lattice", gen)
    last = max((r.last_heartbeat for r in mine), default=None)
    return {
        "org": org, "replicas": want, "readyReplicas": live, "stations": [r.station_id for r in mine],
        "load": load, "capacity": capacity, "loadSummary": f"{load}/{capacity}",
        "lastHeartbeat": last.strftime("%Y-%m-%dT%H:%M:%SZ") if last else None, "observedGeneration": gen,
        "conditions": [condition("Accepted", True, "Reconciled", "", gen), ready, degraded],
    }


def agent_definition(agent: Agent, org: str,
                     tool_servers: dict[str, McpServerSpec] | None = None) -> AgentDefinition:
    """The agent as stations see it, with the ToolServers it names. A Kubernetes Secret reference (the model's
    key, an MCP server's header or env value) becomes a file path in the stations' model-keys volume: the secret
    itself never enters NATS, status, events or logs (:func:`secret_refs` says which keys the volume needs)."""
    spec = agent.spec
    update: dict[str, Any] = {"org": org}
    ref = spec.model.api_key_secret_ref
    if ref is not None:
        update["model"] = spec.model.model_copy(update={"api_key_secret_ref": None, "api_key_file": _key_file(ref)})
    if any(t.mcp is not None for t in spec.tools):
        update["tools"] = [t.model_copy(update={"mcp": _secrets_as_files(t.mcp)}) if t.mcp is not None else t
                           for t in spec.tools]
    servers = {name: _secrets_as_files(server) for name, server in (tool_servers or {}).items()}
    return AgentDefinition(org=org, name=agent.name, labels=agent.metadata.labels, spec=spec.model_copy(update=update),
                           generation=agent.metadata.generation or 1, tool_servers=servers)


def secret_refs(agent: Agent, tool_servers: dict[str, McpServerSpec] | None = None) -> list[SecretKeyRef]:
    """Every Secret key the agent's stations need: its model key and its MCP servers' secret values."""
    refs = [agent.spec.model.api_key_secret_ref] if agent.spec.model.api_key_secret_ref is not None else []
    servers = [t.mcp for t in agent.spec.tools if t.mcp is not None] + list((tool_servers or {}).values())
    for server in servers:
        refs.extend(v.secret_ref for v in (*server.env.values(), *server.headers.values())
                    if isinstance(v, ValueSource) and v.secret_ref is not None)
    unique = {(r.name, r.key): r for r in refs}
    return [unique[k] for k in sorted(unique)]


def _key_file(ref: SecretKeyRef) -> str:
    # The station expands the variable to where its model-keys volume is mounted.
    return f"${{LATTICE_MODEL_KEYS_DIR}}/{model_key_name(ref.name, ref.key)}"


def _secrets_as_files(server: McpServerSpec) -> McpServerSpec:
    def as_file(value: str | ValueSource) -> str | ValueSource:
        if isinstance(value, ValueSource) and value.secret_ref is not None:
            return ValueSource(from_file=_key_file(value.secret_ref))
        return value

    return server.model_copy(update={"env": {k: as_file(v) for k, v in server.env.items()},
                                     "headers": {k: as_file(v) for k, v in server.headers.items()}})


def model_key_name(secret: str, key: str) -> str:
    """File name of a model key in the aggregated secret (Secret keys allow [-._a-zA-Z0-9])."""
    return f"{secret}.{key}"


def agent_status(agent: Agent, org: str, records: Sequence[StationRecord], revision: int | None,
                 now: datetime, problem: str | None = None) -> dict[str, Any]:
    gen = agent.metadata.generation
    hosting = sorted(r.station_id for r in records if agent.name in r.agents and is_live(r, now))
    failing = sorted(f"{r.station_id}: {r.agent_errors[agent.name]}" for r in records
                     if agent.name in r.agent_errors and is_live(r, now))
    model = agent.spec.model
    if problem:
        ready = condition("Ready", False, "Invalid", problem, gen)
    elif hosting:
        ready = condition("Ready", True, "Hosted", f"hosted by {len(hosting)} station(s)", gen)
    elif failing:
        # The stations that select it say why they could not load it: the one thing the user must fix.
        ready = condition("Ready", False, "LoadFailed", "; ".join(failing)[:1000], gen)
    else:
        ready = condition("Ready", False, "NoMatchingStation",
                          "no live station hosts this agent: check stationSelector and the Stations' "
                          "agentSelector, capabilities and readiness", gen)
    tools = discovered_tools(agent.name, [r for r in records if r.station_id in hosting])
    return {"org": org, "model": f"{model.provider}/{model.name or model.function or '-'}",
            "tools": [{"name": n, "source": src} for src, n in tools[:MAX_STATUS_TOOLS]],
            "toolsSummary": f"{len(tools)} tool{'s' if len(tools) != 1 else ''}" if tools else "",
            "stations": len(hosting), "stationIds": hosting[:50], "ready": bool(hosting) and not problem,
            "revision": revision, "observedGeneration": gen,
            "conditions": [condition("Accepted", problem is None, "Invalid" if problem else "Published",
                                     problem or "written to the org's agents bucket", gen), ready]}


#: An Agent's status lists at most this many tools (a record carries at most presence.MAX_TOOLS_PER_AGENT).
MAX_STATUS_TOOLS = 256


def discovered_tools(agent: str, records: Sequence[StationRecord]) -> list[tuple[str, str]]:
    """(source, name) of every tool the stations hosting the agent found when they loaded it, sorted."""
    found = {tuple(entry.split(":", 1)) if ":" in entry else ("", entry)
             for r in records for entry in r.agent_tools.get(agent, [])}
    return sorted((src, name) for src, name in found)


def tool_server_status(server: ToolServer, org: str, agents: Sequence[Agent], records: Sequence[StationRecord],
                       now: datetime) -> dict[str, Any]:
    """A ToolServer's status: the agents that name it, the tools their live stations discovered on it, and
    Ready when at least one station reached it (not ready, with the stations' reasons, when none could)."""
    users = sorted(a.name for a in agents if server.name in referenced_servers(a))
    live = [r for r in records if is_live(r, now)]
    tools = sorted({name for a in users for src, name in discovered_tools(a, live) if src == server.name})
    failing = sorted({f"{a}: {r.agent_errors[a]}" for a in users for r in live if a in r.agent_errors})
    gen = server.metadata.generation
    if not users:
        ready = condition("Ready", False, "Unused", "no agent of the org names this ToolServer", gen)
    elif tools:
        ready = condition("Ready", True, "Discovered", f"{len(tools)} tool(s) found by the stations", gen)
    elif failing:
        ready = condition("Ready", False, "Unreachable", "; ".join(failing)[:1000], gen)
    else:
        ready = condition("Ready", False, "Pending", "no station has loaded an agent that uses it yet", gen)
    return {"org": org, "transport": server.spec.transport or "", "agents": users[:256],
            "tools": tools[:MAX_STATUS_TOOLS], "observedGeneration": gen,
            "conditions": [condition("Accepted", True, "Valid", "agents that name it carry it to their stations",
                                     gen), ready]}


def work_id_for(work_item: WorkItem) -> str:
    """Deterministic from the resource uid: re-submitting after an operator restart is a no-op."""
    uid = work_item.metadata.uid or work_item.name
    return f"wi-{uid}"


def result_text(result: Payload) -> tuple[str | None, bool]:
    if result is None:
        return None, False
    text = result if isinstance(result, str) else json.dumps(result)
    if len(text) > MAX_STATUS_RESULT_CHARS:
        return text[: MAX_STATUS_RESULT_CHARS - 1] + "…", True
    return text, False


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def work_item_status(work_item: WorkItem, org: str, record: WorkRecord) -> dict[str, Any]:
    """Pure: a WorkItem's status mirroring its work record (bounded result, no secrets)."""
    gen = work_item.metadata.generation
    result, truncated = result_text(record.result)
    phase = record.phase
    conditions = [
        condition("Scheduled", record.station_id is not None or phase.terminal,
                  "Assigned" if record.station_id else phase.value, record.reason, gen),
        condition("Succeeded", True if phase == WorkPhase.SUCCEEDED else (False if phase.terminal else "Unknown"),
                  phase.value, record.reason or (record.error.message if record.error else ""), gen),
    ]
    return {
        "org": org, "workId": record.work_id, "phase": phase.value, "station": record.station_id,
        "attempts": record.attempt, "progress": record.progress_percent, "progressMessage": record.progress_message,
        "result": result, "resultTruncated": truncated,
        "error": record.error.message[:1024] if record.error else None,
        "errorCode": record.error.code.value if record.error else None, "reason": record.reason[:1024],
        "submittedAt": _ts(record.created_at), "startedAt": _ts(record.started_at),
        "finishedAt": _ts(record.finished_at), "observedGeneration": gen, "conditions": conditions,
        "waitingFor": waiting_text(record), **_usage_status(record),
    }


#: Annotations on a WorkItem that decide for a run waiting for a person: the value is the reason (approve,
#: reject) or the answer (reply). Removed by the operator once applied.
APPROVE_ANNOTATION = "lattice.station.dev/approve"
REJECT_ANNOTATION = "lattice.station.dev/reject"
REPLY_ANNOTATION = "lattice.station.dev/reply"
DECISION_ANNOTATIONS = (APPROVE_ANNOTATION, REJECT_ANNOTATION, REPLY_ANNOTATION)


def waiting_text(record: WorkRecord) -> str | None:
    """Pure: what a waiting run waits for and which annotation decides it (None when it waits for nothing)."""
    waiting = record.waiting
    if waiting is None or not record.phase.awaiting:
        return None
    how = (f"annotate {APPROVE_ANNOTATION} or {REJECT_ANNOTATION}" if waiting.kind == "approval"
           else f"annotate {REPLY_ANNOTATION}")
    return f"{waiting.summary()[:400]} ({how})"


def decision_from(annotations: Mapping[str, str] | None) -> tuple[bool, str | None, str] | None:
    """Pure: ``(approved, reply, reason)`` from a WorkItem's decision annotation, or None without one. With
    several, the rejection wins over the approval (the safe side) and the reply is taken as it is."""
    if not annotations:
        return None
    if (reason := annotations.get(REJECT_ANNOTATION)) is not None:
        return False, None, reason[:4096]
    if (reply := annotations.get(REPLY_ANNOTATION)) is not None:
        return True, reply[:100_000], ""
    if (reason := annotations.get(APPROVE_ANNOTATION)) is not None:
        return True, None, reason[:4096]
    return None


#: A WorkItem's status names at most this many of the children its run delegated.
MAX_STATUS_CHILDREN = 50


def _usage_status(record: WorkRecord) -> dict[str, Any]:
    """An agent run's spend and family in a WorkItem's status (nothing for work that has none)."""
    out: dict[str, Any] = {}
    if record.usage:
        out.update(inputTokens=record.usage.input_tokens, outputTokens=record.usage.output_tokens,
                   costUsd=round(record.usage.budget_cost_usd, 6), toolCalls=record.usage.tool_calls)
    if record.children:
        out["children"] = record.children[:MAX_STATUS_CHILDREN]
    if record.parent_id:
        out["parent"] = record.parent_id
    return out


#: The annotation whose W3C ``traceparent`` value (if any) the WorkItem's trace continues; a plain
#: ``traceparent`` annotation is read too.
TRACEPARENT_ANNOTATION = "lattice.station.dev/traceparent"


def trace_carrier(annotations: Mapping[str, str] | None) -> dict[str, str] | None:
    """Pure: the trace context a resource's annotations carry, as W3C headers (None: none)."""
    if not annotations:
        return None
    value = annotations.get(TRACEPARENT_ANNOTATION) or annotations.get("traceparent")
    if not value:
        return None
    carrier = {"traceparent": value.strip()}
    if state := annotations.get("lattice.station.dev/tracestate") or annotations.get("tracestate"):
        carrier["tracestate"] = state.strip()
    return carrier

"""kopf handlers: ``<kind>_<event>``. Each is idempotent (it may run twice, or after a restart) and level-based:
timers re-derive status from the lattice rather than trusting diffs. Semantically wrong resources (wrong org,
missing Secret) get a condition and an Event, and are retried slowly, never in a hot loop.

Nothing is registered at import time: :func:`registry` registers every handler with the intervals of the
:class:`~.config.OperatorSettings` it is given (kopf fixes a timer's interval when it is registered), and
:func:`run` runs kopf with those settings in its memo. Settings are read once, by the ``lattice operator`` command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from station_runtime import telemetry
from station_runtime.api.models import (
    GROUP,
    VERSION,
    Agent,
    Station,
    ToolServer,
    WorkItem,
    referenced_servers,
    resolve_tool_servers,
)
from station_runtime.contract.codec import encode
from station_runtime.contract.specs import McpServerSpec
from station_runtime.errors import LatticeError
from station_runtime.natsio.retry import NATS_FAILURES
from station_runtime.telemetry import tracing

from . import builders, kube
from .conditions import condition, merge
from .config import OperatorSettings
from .lattice import Auth, Lattice, NoAuth, OrgRuntime
from .leadership import LeaseElector, LeaseSettings
from .orgs import OrgError, account_limits, resolve_org

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

#: A resource that cannot be reconciled for a reason only a person can fix (a missing Secret) is retried this
#: often: soon enough to notice the fix within a minute, rarely enough never to be a hot loop.
SEMANTIC_RETRY_S = 30.0


def _lattice(memo: Any) -> Lattice:
    lattice: Lattice = memo["lattice"]
    return lattice


async def operator_startup(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger,
                           **_: Any) -> None:
    """kopf's own timeouts (each with why), then the lattice: auth and the per-org runtimes, in the memo."""
    # Progress and diff-base in annotations, not in status: status is ours and declared in the CRDs.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP,
                                                                           key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.level = logging.WARNING
    # A watch is re-established every 2 minutes even when quiet: a silently dead connection (a NAT or load
    # balancer dropping idle TCP) costs at most that long, and the API server's own default (up to 30 min) is
    # too long for status that users watch. The client waits a little longer than the server, so that the server
    # ends the watch cleanly first instead of the client cutting it.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    # An API server that does not accept a connection within 10 s is down; retrying is better than waiting.
    settings.watching.connect_timeout = 10
    # One API request (a patch, a read) takes milliseconds; 30 s is a stuck server, and kopf retries the handler.
    settings.networking.request_timeout = 30
    # kopf waits this long for more events of the same object before handling; 0.1 s by default, which is most
    # of a WorkItem's apply-to-Succeeded time.
    settings.batching.batch_window = 0.01
    # Timers are resyncs: on SIGTERM cancel them at once instead of waiting for them (kopf's default is to wait).
    settings.background.instant_exit_timeout = 1.0
    settings.process.ultimate_exiting_timeout = 60
    cfg: OperatorSettings = memo["settings"]
    auth: Auth
    if cfg.auth == "jwt":
        from .auth import JwtAuth

        auth = await JwtAuth.load(cfg)
    else:
        auth = NoAuth(cfg.nats)
    memo["lattice"] = Lattice(cfg, auth)
    if cfg.metrics_port is not None:
        from station_runtime.station.health import HealthServer

        memo["metrics"] = HealthServer(cfg.metrics_port)
        await memo["metrics"].start()
    logger.info("station-lattice operator: NATS %s (auth %s), station image %s", cfg.nats.describe(), cfg.auth,
                cfg.station_image)


async def operator_cleanup(memo: Any, **_: Any) -> None:
    if "metrics" in memo:
        await memo["metrics"].stop()
    if "lattice" in memo:
        await _lattice(memo).close()


# --- shared ---------------------------------------------------------------------------------------------------


def _parse(model: type[M], body: Mapping[str, Any]) -> M:
    data = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": dict(body.get("metadata", {})),
            "spec": dict(body.get("spec", {}))}
    return model.model_validate(data)


async def _refuse(plural: str, body: kopf.Body, reason: str, message: str, *, retry: bool) -> None:
    """Record why a resource cannot be reconciled (condition + Event), then stop or retry slowly."""
    gen = body.get("metadata", {}).get("generation")
    status = dict(body.get("status") or {})
    conditions = merge(status.get("conditions"), [condition("Accepted", False, reason, message, gen),
                                                  condition("Ready", False, reason, message, gen)])
    await kube.patch_status(plural, body["metadata"]["namespace"], body["metadata"]["name"],
                            {"conditions": conditions, "observedGeneration": gen})
    kopf.warn(body, reason=reason, message=message)
    if retry:
        raise kopf.TemporaryError(message, delay=SEMANTIC_RETRY_S)
    raise kopf.PermanentError(message)


async def _org_runtime(plural: str, body: kopf.Body, memo: Any, spec_org: str | None) -> OrgRuntime:
    namespace = body["metadata"]["namespace"]
    labels, annotations = await kube.namespace_meta(namespace)
    try:
        org = resolve_org(namespace, labels, spec_org)
    except OrgError as exc:
        await _refuse(plural, body, "OrgMismatch", str(exc), retry=False)
    try:
        limits = account_limits(namespace, annotations)
    except OrgError as exc:
        await _refuse(plural, body, "InvalidLimits", str(exc), retry=True)  # fixed on the namespace, not here
    await _lattice(memo).auth.limit(org, limits)
    return await _lattice(memo).org(org)


async def _resource(model: type[M], plural: str, body: kopf.Body) -> M:
    try:
        return _parse(model, body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        await _refuse(plural, body, "Invalid", problems[:1000], retry=False)
        raise  # unreachable: _refuse raises


async def _quietly(model: type[M], body: kopf.Body, memo: Any) -> tuple[M, OrgRuntime] | None:
    """The resource and its org's runtime, or None when the resource is invalid or in the wrong org: timers and
    delete handlers stay silent then, the create/update handler has already said what is wrong."""
    try:
        resource = _parse(model, body)
        namespace = body["metadata"]["namespace"]
        labels, annotations = await kube.namespace_meta(namespace)
        org = resolve_org(namespace, labels, resource.spec.org)  # type: ignore[attr-defined]
        limits = account_limits(namespace, annotations)
    except (ValidationError, OrgError):
        return None
    # A timer applies a changed limit too (within its period): the namespace's annotation has no handler.
    await _lattice(memo).auth.limit(org, limits)
    return resource, await _lattice(memo).org(org)


def _status_changed(current: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    current = current or {}
    if any(current.get(k) != v for k, v in new.items() if k != "conditions"):
        return True
    # Only the conditions given: the others (Accepted, kept by the reconcile handler) are merged as they are.
    had = {c.get("type"): (c.get("status"), c.get("reason"), c.get("message")) for c in current.get("conditions") or []}
    return any(had.get(c["type"]) != (c["status"], c["reason"], c["message"]) for c in new.get("conditions") or [])


def _with_conditions(current: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    return {**new, "conditions": merge((current or {}).get("conditions"), new.get("conditions") or [])}


# --- Station ----------------------------------------------------------------------------------------------------


async def station_reconcile(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Station -> ServiceAccount, creds Secret (JWT mode), StatefulSet; scaling and spec changes roll the pods."""
    station = await _resource(Station, "stations", body)
    runtime = await _org_runtime("stations", body, memo, station.spec.org)
    cfg = _lattice(memo).settings
    namespace = body["metadata"]["namespace"]
    children: list[dict[str, Any]] = [builders.service_account(station, runtime.org)]
    existing = await kube.read_secret(namespace, builders.creds_secret_name(station))
    creds = await _station_creds(station, runtime.org, namespace, memo, existing)
    if creds is not None:
        children.append(builders.creds_secret(station, runtime.org, creds, removed=existing or {}))
    pod = builders.StationPodConfig(image=cfg.station_image, nats_url=cfg.station_nats_url,
                                    heartbeat_s=cfg.station_heartbeat_s, drain_timeout_s=cfg.station_drain_timeout_s,
                                    health_port=cfg.station_health_port, jwt=creds is not None,
                                    image_pull_policy=cfg.image_pull_policy, otel_env=cfg.station_otel_env,
                                    state_replicas=cfg.state_replicas)
    children.append(builders.stateful_set(station, runtime.org, pod))
    for child in children:
        kopf.adopt(child, owner=body)
        await kube.apply(child, namespace)
    logger.info("station %s: %d replica(s) in org %s", station.name, station.spec.replicas, runtime.org)
    await station_status(body, memo)


async def _station_creds(station: Station, org: str, namespace: str, memo: Any,
                         existing: dict[str, str] | None) -> dict[str, str] | None:
    """The creds Secret's data (JWT mode; None without): kept, renewed near their end, issued for new replicas,
    revoked for removed ones (see credplan)."""
    creds = await _lattice(memo).auth.station_creds(org, builders.station_ids(station), existing)
    lattice = _lattice(memo)
    lattice.creds_checked[(namespace, station.name)] = time.monotonic()
    return creds


async def station_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
    await station_status(body, memo)
    await _renew_creds(body, memo)


async def _renew_creds(body: kopf.Body, memo: Any) -> None:
    """Creds end: look at them every sixth of their lifetime (at most every minute) and write the Secret again
    when some were renewed; the pods see the new files and their stations reconnect with them."""
    lattice = _lattice(memo)
    if lattice.settings.auth != "jwt":
        return
    namespace = body["metadata"]["namespace"]
    key = (namespace, body["metadata"]["name"])
    every = min(lattice.settings.station_creds_ttl_s / 6, 60.0)
    if time.monotonic() - lattice.creds_checked.get(key, 0.0) < every:
        return
    found = await _quietly(Station, body, memo)
    if found is None:
        return
    station, runtime = found
    existing = await kube.read_secret(namespace, builders.creds_secret_name(station))
    creds = await _station_creds(station, runtime.org, namespace, memo, existing)
    if creds is not None and creds != existing:
        secret = builders.creds_secret(station, runtime.org, creds, removed=existing or {})
        kopf.adopt(secret, owner=body)
        await kube.apply(secret, namespace)


async def station_status(body: kopf.Body, memo: Any) -> None:
    found = await _quietly(Station, body, memo)
    if found is None:
        return
    station, runtime = found
    namespace = body["metadata"]["namespace"]
    ready = await kube.ready_replicas(station.name, namespace)
    new = builders.station_status(station, runtime.org, runtime.records(), ready, datetime.now(UTC))
    current = body.get("status")
    if _status_changed(current, new):
        await kube.patch_status("stations", namespace, station.name, _with_conditions(current, new))


# --- Agent -----------------------------------------------------------------------------------------------------


async def agent_reconcile(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Agent -> the org's agents bucket with the ToolServers it names (stations that match load it live); its
    Secret references (model key, MCP headers and env) -> the namespace's model-keys Secret, mounted by every
    station pod."""
    agent = await _resource(Agent, "agents", body)
    runtime = await _org_runtime("agents", body, memo, agent.spec.org)
    namespace = body["metadata"]["namespace"]
    published = await _publish_agent(agent, runtime, namespace)
    if isinstance(published, str):
        await _refuse("agents", body, "SecretMissing", f"{published}; retrying every {SEMANTIC_RETRY_S:.0f}s",
                      retry=True)
        return
    logger.info("agent %s published to org %s (revision %d)", agent.name, runtime.org, published)
    await agent_status(body, memo, revision=published)


async def _publish_agent(agent: Agent, runtime: OrgRuntime, namespace: str,
                         without_server: str | None = None) -> int | str:
    """Publish an agent with the ToolServers of its namespace that it names (not ``without_server``, which is
    being deleted): the revision written, or what is missing (a Secret key) and so was not published."""
    servers: dict[str, McpServerSpec] = {}
    if referenced_servers(agent):
        found = [s for s in await _tool_servers(namespace, runtime.org) if s.name != without_server]
        servers = resolve_tool_servers(agent, found)
    values: dict[str, str | None] = {}
    for ref in builders.secret_refs(agent, servers):
        value = await kube.read_secret_key(namespace, ref.name, ref.key)
        if value is None:
            return f"Secret {ref.name!r} has no key {ref.key!r} in namespace {namespace}: create it"
        values[builders.model_key_name(ref.name, ref.key)] = value
    if values:
        await kube.patch_secret_keys(namespace, builders.MODEL_KEYS_SECRET, values,
                                     labels=builders.labels("agent", agent.name, runtime.org))
    definition = builders.agent_definition(agent, runtime.org, servers)
    state = await runtime.client.state()
    return await state.agents.put(agent.name, encode(definition))


async def _tool_servers(namespace: str, org: str) -> list[ToolServer]:
    """The valid ToolServers of a namespace that belong to ``org`` (an invalid one has its own condition)."""
    servers = []
    for item in await kube.list_custom("toolservers", namespace):
        try:
            server = _parse(ToolServer, item)
        except ValidationError:
            continue
        if (server.spec.org or org) == org:
            servers.append(server)
    return servers


async def _agents(namespace: str) -> list[Agent]:
    agents = []
    for item in await kube.list_custom("agents", namespace):
        with contextlib.suppress(ValidationError):
            agents.append(_parse(Agent, item))
    return agents


async def agent_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
    current = body.get("status") or {}
    if _refused(current, body.get("metadata", {}).get("generation")):
        return  # the reconcile handler's refusal (a missing Secret) stands until its retry publishes the agent
    await agent_status(body, memo)


def _refused(status: dict[str, Any], generation: int | None) -> bool:
    """Did the reconcile handler refuse this generation (``Accepted=False`` from :func:`_refuse`)?"""
    return any(c.get("type") == "Accepted" and c.get("status") == "False" and c.get("observedGeneration") == generation
               for c in status.get("conditions") or [])


async def agent_status(body: kopf.Body, memo: Any, revision: int | None = None) -> None:
    found = await _quietly(Agent, body, memo)
    if found is None:
        return
    agent, runtime = found
    namespace = body["metadata"]["namespace"]
    current = body.get("status") or {}
    published = revision is not None
    revision = revision if published else current.get("revision")
    new = builders.agent_status(agent, runtime.org, runtime.records(), revision, datetime.now(UTC))
    if not published:
        # Accepted belongs to the reconcile handler (published, or refused for a missing Secret). The timer's body
        # may be older than such a refusal, and a status patch replaces the whole list of conditions: so the
        # timer leaves Accepted out, and merges into the status as stored now.
        new["conditions"] = [c for c in new["conditions"] if c["type"] != "Accepted"]
    if not _status_changed(current, new):
        return
    if published:
        await kube.patch_status("agents", namespace, agent.name, _with_conditions(current, new))
        return
    stored = await kube.read_status("agents", namespace, agent.name)
    if stored is None or _refused(stored[0], agent.metadata.generation):
        return
    # A compare-and-set on the version read: a refusal written meanwhile wins, and the next tick looks again.
    await kube.patch_status("agents", namespace, agent.name, _with_conditions(stored[0], new), stored[1])


async def agent_delete(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Remove the agent from its org: stations drop it live."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    found = await _quietly(Agent, body, memo)
    if found is None:
        return  # it never made it into the lattice
    agent, runtime = found
    org = runtime.org
    state = await runtime.client.state()
    try:
        await state.agents.delete(name)
    except NATS_FAILURES as exc:  # NATS away: kopf retries the deletion (the finalizer holds the resource)
        raise kopf.TemporaryError(f"could not remove agent {name} from org {org}: {exc}", delay=5) from exc
    # Its Secret keys leave the model-keys Secret unless another agent of the namespace still needs them.
    others = [a for a in await _agents(namespace) if a.name != name]
    servers = await _tool_servers(namespace, org)
    kept = {(r.name, r.key) for a in others for r in builders.secret_refs(a, resolve_tool_servers(a, servers))}
    gone = {builders.model_key_name(r.name, r.key): None
            for r in builders.secret_refs(agent, resolve_tool_servers(agent, servers)) if (r.name, r.key) not in kept}
    if gone:
        await kube.patch_secret_keys(namespace, builders.MODEL_KEYS_SECRET, dict(gone))
    logger.info("agent %s removed from org %s", name, org)


# --- ToolServer --------------------------------------------------------------------------------------------------


async def toolserver_reconcile(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """ToolServer -> every agent of the org that names it is published again with it (its stations reconnect)."""
    server = await _resource(ToolServer, "toolservers", body)
    runtime = await _org_runtime("toolservers", body, memo, server.spec.org)
    namespace = body["metadata"]["namespace"]
    users = [a for a in await _agents(namespace) if server.name in referenced_servers(a)
             and (a.spec.org or runtime.org) == runtime.org]
    for agent in users:
        published = await _publish_agent(agent, runtime, namespace)
        if isinstance(published, str):
            kopf.warn(body, reason="SecretMissing", message=f"agent {agent.name}: {published}")
    logger.info("toolserver %s: %d agent(s) of org %s republished", server.name, len(users), runtime.org)
    await toolserver_status(body, memo)


async def toolserver_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
    await toolserver_status(body, memo)


async def toolserver_status(body: kopf.Body, memo: Any) -> None:
    found = await _quietly(ToolServer, body, memo)
    if found is None:
        return
    server, runtime = found
    namespace = body["metadata"]["namespace"]
    new = builders.tool_server_status(server, runtime.org, await _agents(namespace), runtime.records(),
                                      datetime.now(UTC))
    current = body.get("status")
    if _status_changed(current, new):
        await kube.patch_status("toolservers", namespace, server.name, _with_conditions(current, new))


async def toolserver_delete(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """The agents that named it are published without it: their stations say it is missing (not ready)."""
    found = await _quietly(ToolServer, body, memo)
    if found is None:
        return
    server, runtime = found
    namespace = body["metadata"]["namespace"]
    for agent in await _agents(namespace):
        if server.name in referenced_servers(agent) and (agent.spec.org or runtime.org) == runtime.org:
            try:
                await _publish_agent(agent, runtime, namespace, without_server=server.name)
            except NATS_FAILURES as exc:
                raise kopf.TemporaryError(f"could not republish agent {agent.name}: {exc}", delay=5) from exc
    logger.info("toolserver %s removed from org %s", server.name, runtime.org)


# --- WorkItem ----------------------------------------------------------------------------------------------------


async def workitem_submit(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """WorkItem -> work in the lattice, once: the work id derives from the resource uid, so a retry or an
    operator restart finds the existing work instead of submitting it again."""
    work_item = await _resource(WorkItem, "workitems", body)
    runtime = await _org_runtime("workitems", body, memo, work_item.spec.org)
    namespace = body["metadata"]["namespace"]
    work_id = builders.work_id_for(work_item)
    # The trace starts here (or under the traceparent annotation of whoever applied the WorkItem): the
    # submission below is its child, and everything after follows the work record's traceparent.
    with tracing.span("lattice.workitem.reconcile", kind="consumer",
                      parent=tracing.incoming(builders.trace_carrier(body["metadata"].get("annotations"))),
                      attributes={"k8s.namespace.name": namespace, "lattice.workitem": work_item.name,
                                  "lattice.work.id": work_id, "lattice.org": runtime.org}):
        await _submit_work_item(work_item, runtime, namespace, work_id, logger)


async def _submit_work_item(work_item: WorkItem, runtime: OrgRuntime, namespace: str, work_id: str,
                            logger: kopf.Logger) -> None:
    existing = await runtime.client.get_work(work_id)
    if existing is not None and existing.phase.terminal:
        runtime.mirror.track(work_id, namespace, work_item.name, work_item)
        runtime.mirror.offer(existing)
        return
    runtime.mirror.track(work_id, namespace, work_item.name, work_item)
    if existing is None:
        spec = work_item.spec.model_copy(update={"org": runtime.org})
        record = await runtime.client.submit(spec, work_id=work_id)
        logger.info("workitem %s submitted as %s: %s", work_item.name, work_id, record.phase.value)
    else:
        record = existing
    runtime.mirror.offer(record)


async def workitem_decide(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """A decision annotation on a WorkItem whose run waits for a person: applied (the run resumes), then
    removed. On work that does not wait (yet), the annotation stays, and the resync applies it once it does."""
    decision = builders.decision_from(body["metadata"].get("annotations"))
    if decision is None:
        return
    found = await _quietly(WorkItem, body, memo)
    if found is None:
        return
    work_item, runtime = found
    await _decide(work_item, runtime, body["metadata"]["namespace"], decision, logger)


async def _decide(work_item: WorkItem, runtime: OrgRuntime, namespace: str,
                  decision: tuple[bool, str | None, str], logger: kopf.Logger) -> None:
    approved, reply, reason = decision
    work_id = builders.work_id_for(work_item)
    try:
        record = await runtime.client.decide(work_id, approved=approved, reply=reply, reason=reason,
                                             by=f"WorkItem {namespace}/{work_item.name}")
    except LatticeError as exc:  # not waiting (yet, or any more): the annotation waits for the resync
        logger.debug("workitem %s: decision not applied: %s", work_item.name, exc)
        return
    logger.info("workitem %s: %s (%s)", work_item.name, record.reason, record.work_id)
    await kube.remove_annotations("workitems", namespace, work_item.name, builders.DECISION_ANNOTATIONS)
    runtime.mirror.offer(record)


async def workitem_resync(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Level-based safety net for the event-driven mirror, and the TTL of finished WorkItems."""
    found = await _quietly(WorkItem, body, memo)
    if found is None:
        return
    work_item, runtime = found
    namespace = body["metadata"]["namespace"]
    work_id = builders.work_id_for(work_item)
    record = await runtime.client.get_work(work_id)
    if record is None:
        return
    runtime.mirror.track(work_id, namespace, work_item.name, work_item)
    runtime.mirror.offer(record)
    if (decision := builders.decision_from(body["metadata"].get("annotations"))) is not None and \
            record.phase.awaiting:
        await _decide(work_item, runtime, namespace, decision, logger)
    ttl = _lattice(memo).settings.work_item_ttl_s
    if ttl > 0 and record.phase.terminal and record.finished_at is not None:
        age = (datetime.now(UTC) - record.finished_at).total_seconds()
        if age > ttl:
            logger.info("workitem %s finished %.0fs ago (ttl %.0fs): deleting", work_item.name, age, ttl)
            runtime.mirror.untrack(work_id)
            await kube.delete_custom("workitems", namespace, work_item.name)


async def workitem_delete(body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Deleting a WorkItem whose work is still queued or running cancels the work."""
    found = await _quietly(WorkItem, body, memo)
    if found is None:
        return
    work_item, runtime = found
    namespace = body["metadata"]["namespace"]
    work_id = builders.work_id_for(work_item)
    runtime.mirror.untrack(work_id)
    record = await runtime.client.get_work(work_id)
    if record is not None and not record.phase.terminal:
        await runtime.client.cancel_work(work_id, reason=f"WorkItem {namespace}/{work_item.name} deleted")
        logger.info("workitem %s deleted: work %s cancelled", work_item.name, work_id)




# --- registration ------------------------------------------------------------------------------------------------


def registry(cfg: OperatorSettings) -> kopf.OperatorRegistry:
    """Every handler, registered with ``cfg``'s intervals."""
    reg = kopf.OperatorRegistry()
    # kopf puts its login through the Kubernetes client in its default registry only; ours needs it too (the
    # `kubernetes` package: in-cluster service account, else the kubeconfig).
    kopf.on.login(registry=reg)(kopf.login_via_client)
    kopf.on.startup(registry=reg)(operator_startup)
    kopf.on.cleanup(registry=reg)(operator_cleanup)
    for plural, reconcile, resync in (("stations", station_reconcile, station_resync),
                                      ("agents", agent_reconcile, agent_resync),
                                      ("toolservers", toolserver_reconcile, toolserver_resync)):
        kopf.on.resume(GROUP, VERSION, plural, registry=reg)(reconcile)
        kopf.on.create(GROUP, VERSION, plural, registry=reg)(reconcile)
        kopf.on.update(GROUP, VERSION, plural, field="spec", registry=reg)(reconcile)
        # Status follows presence, which changes with every heartbeat; it is patched only when it changed.
        kopf.timer(GROUP, VERSION, plural, interval=cfg.resync_s, initial_delay=1.0, registry=reg)(resync)
    kopf.on.update(GROUP, VERSION, "agents", field="metadata.labels", registry=reg)(agent_reconcile)
    kopf.on.delete(GROUP, VERSION, "agents", registry=reg)(agent_delete)
    kopf.on.delete(GROUP, VERSION, "toolservers", registry=reg)(toolserver_delete)
    kopf.on.resume(GROUP, VERSION, "workitems", registry=reg)(workitem_submit)
    kopf.on.create(GROUP, VERSION, "workitems", registry=reg)(workitem_submit)
    # The mirror is event-driven; this timer is its level-based safety net and the finished items' TTL.
    kopf.timer(GROUP, VERSION, "workitems", interval=cfg.work_resync_s, initial_delay=cfg.work_resync_s,
               registry=reg)(workitem_resync)
    kopf.on.delete(GROUP, VERSION, "workitems", registry=reg)(workitem_delete)
    # A person's decision for a run that waits (approve, reject, reply), given as an annotation.
    kopf.on.update(GROUP, VERSION, "workitems", field="metadata.annotations", registry=reg)(workitem_decide)
    return reg


def run(cfg: OperatorSettings, *, namespaces: list[str], liveness_port: int) -> None:
    """Run the operator until SIGTERM: kopf standalone, every handler of :func:`registry`; with leader election,
    only once this replica holds the Lease (:mod:`.leadership`), and never after it lost it."""
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per liveness probe otherwise
    telemetry.configure("lattice-operator")
    elector = None
    if cfg.leader_election:
        elector = LeaseElector(kube.api(), LeaseSettings.for_duration(cfg.namespace, cfg.lease_duration_s))
        elector.acquire(liveness_port=liveness_port or None)
        # Lost: out at once, before a standby may take the lease (its pod restarts and stands by).
        elector.hold(on_lost=lambda: os._exit(1))
    try:
        kopf.run(registry=registry(cfg), memo=kopf.Memo(settings=cfg), standalone=True, clusterwide=not namespaces,
                 namespaces=namespaces,
                 liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None)
    finally:
        if elector is not None:
            elector.release()

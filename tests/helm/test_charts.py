"""`helm lint` and `helm template` of both charts: what they render, and that bad values fail with a clear message.
Offline: no cluster needed, only the helm binary."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from typing import Any

import pytest
import yaml
from station_operator.orgs import LIMITS_ANNOTATION, account_limits

from station_runtime.api.models import Agent, Station
from station_runtime.natsauth import AccountLimits
from tests.helm.helmtool import ORG_CHART, PLATFORM_CHART, Helm, find, kinds

pytestmark = [pytest.mark.helm, pytest.mark.timeout(60)]

ORG_VALUES: dict[str, Any] = {
    "org": {"id": "acme_labs"},
    "stations": {"worker": {"spec": {"replicas": 2, "capabilities": ["text"], "maxConcurrency": 4}},
                 "gpu": {"labels": {"tier": "gpu"}, "spec": {"replicas": 1, "labels": {"zone": "b"}}}},
    "agents": {"echo": {"labels": {"team": "docs"}, "spec": {"capabilities": ["say"], "model": {"provider": "echo"}}},
               "assistant": {"spec": {"model": {"provider": "openai", "name": "gpt-4o-mini"}}},
               "own-key": {"spec": {"model": {"provider": "openai", "name": "m", "apiKeyEnv": "MY_KEY"}}}},
}
# Seeds in the nkey format (they are only base64-encoded into a Secret, never parsed by the chart).
OPERATOR_SEED = "SOAB" + "C" * 54
ACCOUNT_SEED = "SAAB" + "D" * 54


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


@pytest.mark.parametrize(("chart", "values"), [
    (PLATFORM_CHART, None),
    (PLATFORM_CHART, {"auth": {"mode": "jwt"}}),
    (PLATFORM_CHART, {"nats": {"enabled": False}, "operator": {"natsUrl": "nats://nats.example:4222"}}),
    (ORG_CHART, ORG_VALUES),
], ids=["platform", "platform-jwt", "platform-external-nats", "org"])
def test_lint_strict(helm: Helm, chart: Any, values: dict[str, Any] | None) -> None:
    out = helm.lint(chart, values)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_platform_renders_crds_operator_nats_and_rbac(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, release="station-lattice")
    assert kinds(docs) == sorted(["CustomResourceDefinition"] * 4 + [
        "ServiceAccount", "Deployment", "ClusterRole", "ClusterRoleBinding", "ClusterRole", "ClusterRole",
        "ConfigMap", "ConfigMap", "Service", "Service", "StatefulSet", "PodDisruptionBudget", "PodDisruptionBudget",
        "Role", "RoleBinding"])
    # (the second ConfigMap: the dashboard; the budgets: NATS's, one server at a time, and the operator's; the
    # Role: the operator's Lease)
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition") == [
        "agents.lattice.station.dev", "stations.lattice.station.dev", "toolservers.lattice.station.dev",
        "workitems.lattice.station.dev"]
    for doc in docs:
        if doc["kind"] != "CustomResourceDefinition":
            labels = doc["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == "station-lattice", doc["metadata"]
            assert labels["app.kubernetes.io/part-of"] == "station-lattice"
            assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_operator_deployment(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"operator": {"env": {"LATTICE_RESYNC": 2}, "stationHealthPort": None,
                                                       "watchNamespaces": ["a", "b"]}},
                         release="station-lattice", namespace="lattice-system")
    deployment = find(docs, "Deployment", "station-lattice-operator")
    # Two replicas, one acting (a Lease); a rollout starts the new pod first (the old one gives the lease up).
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert find(docs, "PodDisruptionBudget", "station-lattice-operator")["spec"]["minAvailable"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "station-lattice-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (operator,) = pod["containers"]
    assert operator["command"] == ["lattice"]
    assert operator["args"] == ["--nats=nats://station-lattice-nats:4222", "--log-level=INFO", "operator",
                                "--liveness-port=8081", "--namespace=a", "--namespace=b"]
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert operator["ports"] == [{"name": "healthz", "containerPort": 8081}, {"name": "metrics", "containerPort": 9464}]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in operator["env"]}
    assert env == {
        "LATTICE_OPERATOR_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "LATTICE_AUTH": "none",
        "LATTICE_STATION_NATS_URL": "nats://station-lattice-nats.lattice-system.svc:4222",
        "LATTICE_STATION_IMAGE": "ghcr.io/station-lattice/station-lattice:0.1.0",
        "LATTICE_IMAGE_PULL_POLICY": "IfNotPresent",
        "LATTICE_STATION_HEALTH_PORT": "none",
        "LATTICE_METRICS_PORT": "9464",
        "LATTICE_LEADER_ELECTION": "true",
        "LATTICE_LEADER_LEASE": "15",
        "LATTICE_OPERATOR_ID": {"fieldRef": {"fieldPath": "metadata.name"}},
        "LATTICE_STATE_REPLICAS": "3",
        "LATTICE_RESYNC": "2",
    }
    assert operator["image"] == "ghcr.io/station-lattice/station-lattice:0.1.0"


def test_every_container_is_non_root_read_only_and_bounded(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"auth": {"mode": "jwt"}})
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    assert sorted(d["kind"] for d in workloads) == ["Deployment", "Job", "StatefulSet"]
    for doc in workloads:
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers(doc):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


# Exactly what handlers.py, kube.py and kopf do; a new verb in the operator must be added here and in the chart.
OPERATOR_RULES = {
    ("lattice.station.dev", "stations"): {"get", "list", "watch", "patch"},
    ("lattice.station.dev", "agents"): {"get", "list", "watch", "patch"},
    ("lattice.station.dev", "toolservers"): {"get", "list", "watch", "patch"},
    ("lattice.station.dev", "workitems"): {"get", "list", "watch", "patch", "delete"},
    ("lattice.station.dev", "stations/status"): {"patch"},
    ("lattice.station.dev", "agents/status"): {"patch"},
    ("lattice.station.dev", "toolservers/status"): {"patch"},
    ("lattice.station.dev", "workitems/status"): {"patch"},
    ("lattice.station.dev", "stations/finalizers"): {"update"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
    ("", "serviceaccounts"): {"get", "create", "patch"},
    ("", "secrets"): {"get", "create", "patch"},
    ("apps", "statefulsets"): {"get", "create", "patch"},
    ("apps", "statefulsets/status"): {"get"},
    ("", "events"): {"create"},
}


def rule_table(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def test_operator_rbac_is_exact_and_has_no_wildcards(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"auth": {"mode": "jwt"}}, release="station-lattice")
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            text = yaml.safe_dump(doc["rules"])
            assert "'*'" not in text and '"*"' not in text, doc["metadata"]["name"]
    role = find(docs, "ClusterRole", "station-lattice-operator")
    assert rule_table(role) == OPERATOR_RULES
    binding = find(docs, "ClusterRoleBinding", "station-lattice-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "station-lattice-operator",
                                    "namespace": "lattice-system"}]
    # The Lease of the leader election, in the operator's namespace only.
    leader = find(docs, "Role", "station-lattice-operator-leader")
    assert leader["metadata"]["namespace"] == "lattice-system"
    assert rule_table(leader) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    edit = find(docs, "ClusterRole", "station-lattice-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"


def nats_conf(docs: list[dict[str, Any]]) -> str:
    conf: str = find(docs, "ConfigMap", "test-station-lattice-nats-config")["data"]["nats.conf"]
    return conf


def test_nats_jetstream_on_a_pvc_with_fsync_and_no_auth(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART)
    conf = nats_conf(docs)
    assert 'store_dir: "/data"' in conf and "sync_interval: always" in conf
    assert 'listen: "0.0.0.0:4222"' in conf and "include" not in conf
    nats = find(docs, "StatefulSet", "test-station-lattice-nats")
    assert nats["spec"]["replicas"] == 3
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "nats:2.12-alpine"
    assert container["args"] == ["--config", "/etc/nats/nats.conf"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/nats", "/data"}
    assert nats["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    # Go collects harder before the pod's memory limit (1Gi) rather than at twice the live heap.
    assert {"name": "GOMEMLIMIT", "value": "900MiB"} in container["env"]
    unset = find(helm.template(PLATFORM_CHART, {"nats": {"goMemLimit": ""}}), "StatefulSet", nats["metadata"]["name"])
    assert [e["name"] for e in unset["spec"]["template"]["spec"]["containers"][0]["env"]] == ["POD_NAME"]


def test_nats_is_a_three_server_cluster_whose_config_the_real_server_accepts(helm: Helm, tmp_path: Any) -> None:
    from station_runtime.natsio.embedded import find_nats_server

    docs = helm.template(PLATFORM_CHART)
    conf = nats_conf(docs)
    nats = find(docs, "StatefulSet", "test-station-lattice-nats")
    assert nats["spec"]["podManagementPolicy"] == "Parallel"
    ns = nats["metadata"]["namespace"]
    members = [f"nats://test-station-lattice-nats-{i}.test-station-lattice-nats-headless.{ns}.svc:6222"
               for i in range(3)]
    assert all(m in conf for m in members) and "server_name: $POD_NAME" in conf
    (container,) = nats["spec"]["template"]["spec"]["containers"]
    assert {"name": "cluster", "containerPort": 6222} in container["ports"]
    spread = nats["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert find(docs, "PodDisruptionBudget", "test-station-lattice-nats")["spec"]["maxUnavailable"] == 1
    operator = find(docs, "Deployment", "test-station-lattice-operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LATTICE_STATE_REPLICAS"] == "3"
    # The real nats-server reads the rendered file as the pod would (POD_NAME from the downward API).
    (tmp_path / "nats.conf").write_text(conf)
    check = subprocess.run([find_nats_server(), "-t", "-c", str(tmp_path / "nats.conf")], capture_output=True,
                           text=True, env={**os.environ, "POD_NAME": "test-station-lattice-nats-0"}, timeout=30)
    assert check.returncode == 0, check.stderr + check.stdout

    single = helm.template(PLATFORM_CHART, {"nats": {"replicas": 1}, "operator": {"replicas": 1}})
    assert "cluster {" not in nats_conf(single)
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget"]
    operator = find(single, "Deployment", "test-station-lattice-operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LATTICE_STATE_REPLICAS"] == "1"
    assert "more than nats.replicas" in helm.template_error(PLATFORM_CHART, {"nats": {"replicas": 1,
                                                                                      "stateReplicas": 3}})


def test_nats_without_persistence_uses_an_empty_dir(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"nats": {"persistence": {"enabled": False},
                                                   "jetstream": {"storeDir": ".", "syncAlways": False}}})
    nats = find(docs, "StatefulSet", "test-station-lattice-nats")
    assert "volumeClaimTemplates" not in nats["spec"]
    assert {"name": "data", "emptyDir": {}} in nats["spec"]["template"]["spec"]["volumes"]
    conf = nats_conf(docs)
    assert 'store_dir: "."' in conf and "sync_interval" not in conf


def test_jwt_mode_bootstraps_keys_and_includes_the_resolver(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"auth": {"mode": "jwt"}}, release="station-lattice",
                         namespace="lattice-system")
    conf = find(docs, "ConfigMap", "station-lattice-nats-config")["data"]["nats.conf"]
    assert 'include "resolver.conf"' in conf
    nats = find(docs, "StatefulSet", "station-lattice-nats")
    config = next(v for v in nats["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert {"configMap": {"name": "lattice-nats-resolver", "items": [{"key": "resolver.conf",
                                                                      "path": "resolver.conf"}]}} in \
        config["projected"]["sources"]
    job = find(docs, "Job", "station-lattice-auth-bootstrap")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["lattice"]
    assert container["args"] == ["auth", "bootstrap", "--namespace=lattice-system", "--resolver-dir=/data/jwt"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "station-lattice-auth-bootstrap"
    role = find(docs, "Role", "station-lattice-auth-bootstrap")
    assert rule_table(role) == {("", "secrets"): {"create", "get", "patch"},
                                ("", "configmaps"): {"create", "get", "patch"}}
    assert {tuple(r.get("resourceNames", [])) for r in role["rules"]} == {
        (), ("lattice-nats-operator",), ("lattice-nats-resolver",)}
    for doc in (find(docs, "ServiceAccount", "station-lattice-auth-bootstrap"), role,
                find(docs, "RoleBinding", "station-lattice-auth-bootstrap")):
        assert int(doc["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"])
    env = {e["name"]: e.get("value") for e in find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    assert env["LATTICE_AUTH"] == "jwt"
    assert not [d for d in docs if d["kind"] == "Secret"], "no keys in the release unless given as values"
    none_docs = helm.template(PLATFORM_CHART)
    assert not [d for d in none_docs if d["kind"] in ("Job", "Secret")
                or (d["kind"] in ("Role", "RoleBinding") and "auth-bootstrap" in d["metadata"]["name"])]


def test_jwt_keys_from_values_only_reach_the_secret(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"auth": {"mode": "jwt", "jwt": {
        "operatorSeed": OPERATOR_SEED, "systemAccountSeed": ACCOUNT_SEED, "operatorName": "acme-operator"}}})
    secret = find(docs, "Secret", "lattice-nats-operator")
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"operator-seed": OPERATOR_SEED, "system-account-seed": ACCOUNT_SEED,
                       "operator-name": "acme-operator"}
    rendered = yaml.safe_dump_all(docs)
    assert OPERATOR_SEED not in rendered and ACCOUNT_SEED not in rendered
    # The bootstrap keeps an existing Secret, so it must run after this one is created.
    job = find(docs, "Job")
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    notes = (PLATFORM_CHART / "templates" / "NOTES.txt").read_text()
    assert "Seed" not in notes and ".Values.auth.jwt" not in notes


def test_external_nats(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"nats": {"enabled": False},
                                          "operator": {"natsUrl": "nats://nats.example:4222"}})
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "Service", "ConfigMap")
                and not d["metadata"]["name"].endswith("-dashboard")]  # no NATS objects; the dashboard stays
    operator = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert operator["args"][0] == "--nats=nats://nats.example:4222"
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["LATTICE_STATION_NATS_URL"] == "nats://nats.example:4222"
    error = helm.template_error(PLATFORM_CHART, {"nats": {"enabled": False}})
    assert "set operator.natsUrl" in error


def test_org_chart_renders_a_labelled_namespace_quota_stations_and_agents(helm: Helm) -> None:
    docs = helm.template(ORG_CHART, ORG_VALUES, release="acme", namespace="lattice-system")
    namespace = find(docs, "Namespace")
    assert namespace["metadata"]["name"] == "acme-labs"
    assert namespace["metadata"]["labels"]["lattice.station.dev/org"] == "acme_labs"
    quota = find(docs, "ResourceQuota")
    assert quota["metadata"]["namespace"] == "acme-labs" and quota["spec"]["hard"]["pods"] == "50"
    stations = {d["metadata"]["name"]: Station.model_validate(d) for d in docs if d["kind"] == "Station"}
    agents = {d["metadata"]["name"]: Agent.model_validate(d) for d in docs if d["kind"] == "Agent"}
    assert sorted(stations) == ["gpu", "worker"] and sorted(agents) == ["assistant", "echo", "own-key"]
    assert stations["worker"].spec.replicas == 2 and stations["gpu"].spec.labels == {"zone": "b"}
    assert stations["gpu"].metadata.labels["tier"] == "gpu"
    assert {s.metadata.namespace for s in [*stations.values(), *agents.values()]} == {"acme-labs"}
    assert agents["echo"].metadata.labels["team"] == "docs"
    # openai agents without a key of their own get the org's model-provider Secret; others are left alone.
    ref = agents["assistant"].spec.model.api_key_secret_ref
    assert ref is not None and (ref.name, ref.key) == ("model-provider", "api-key")
    assert agents["own-key"].spec.model.api_key_secret_ref is None
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_org_chart_puts_the_orgs_nats_limits_on_its_namespace(helm: Helm) -> None:
    values = {"org": {"id": "acme"}, "natsLimits": {"connections": 50, "jetstreamDiskBytes": 4 << 30,
                                                     "consumers": -1}}
    namespace = find(helm.template(ORG_CHART, values, release="acme", namespace="lattice-system"), "Namespace")
    raw = namespace["metadata"]["annotations"][LIMITS_ANNOTATION]
    assert json.loads(raw) == {"connections": 50, "jetstreamDiskBytes": 4 << 30, "consumers": -1}
    # What the operator makes of it: the account's limits.
    assert account_limits("acme", namespace["metadata"]["annotations"]) == AccountLimits(
        conn=50, disk_storage=4 << 30)
    unset = find(helm.template(ORG_CHART, {"org": {"id": "acme"}}, release="acme"), "Namespace")
    assert LIMITS_ANNOTATION not in (unset["metadata"].get("annotations") or {})


def test_org_chart_in_an_existing_namespace_with_its_own_model_secret(helm: Helm) -> None:
    values = {"org": {"id": "beta"}, "namespace": {"create": False}, "quota": {"enabled": False},
              "modelProvider": {"create": True, "apiKey": "sk-test", "secretName": "llm", "secretKey": "key"},
              "agents": {"a": {"spec": {"model": {"provider": "openai", "name": "m"}}}}}
    docs = helm.template(ORG_CHART, values, release="beta", namespace="team-beta")
    assert kinds(docs) == ["Agent", "Secret"]
    secret = find(docs, "Secret", "llm")
    assert secret["metadata"]["namespace"] == "team-beta"
    assert base64.b64decode(secret["data"]["key"]).decode() == "sk-test"
    agent = find(docs, "Agent", "a")
    assert agent["metadata"]["namespace"] == "team-beta"
    assert agent["spec"]["model"]["apiKeySecretRef"] == {"name": "llm", "key": "key"}


@pytest.mark.parametrize(("chart", "values", "message"), [
    (PLATFORM_CHART, {"auth": {"mode": "tls"}}, "at '/auth/mode': value must be one of 'none', 'jwt'"),
    (PLATFORM_CHART, {"nats": {"port": "4222x"}}, "at '/nats/port': got string, want integer"),
    (PLATFORM_CHART, {"operator": {"replicas": 0}}, "at '/operator/replicas'"),
    (PLATFORM_CHART, {"operator": {"leaseSeconds": 1}}, "at '/operator/leaseSeconds'"),
    (PLATFORM_CHART, {"operator": {"env": {"PATH": "/x"}}}, "PATH"),
    (PLATFORM_CHART, {"operator": {"natsUrl": "127.0.0.1:4222"}}, "at '/operator/natsUrl'"),
    (PLATFORM_CHART, {"auth": {"mode": "jwt", "jwt": {"operatorSeed": "not-a-seed"}}},
     "at '/auth/jwt/operatorSeed'"),
    (PLATFORM_CHART, {"auth": {"mode": "jwt", "jwt": {"operatorSeed": OPERATOR_SEED}}},
     "auth.jwt.systemAccountSeed is required"),
    (PLATFORM_CHART, {"nats": {"persistence": {"size": "lots"}}}, "at '/nats/persistence/size'"),
    (PLATFORM_CHART, {"nats": {"goMemLimit": "1G"}}, "at '/nats/goMemLimit': '1G' does not match pattern"),
    (ORG_CHART, None, "at '/org/id': minLength: got 0, want 1"),
    (ORG_CHART, {"org": {"id": "acme.labs"}}, "at '/org/id': 'acme.labs' does not match pattern"),
    (ORG_CHART, {"org": {"id": "a"}, "stations": {"Worker": {"spec": {}}}},
     "at '/stations': additional properties 'Worker' not allowed"),
    (ORG_CHART, {"org": {"id": "a"}, "stations": {"w": {"replicas": 2}}}, "at '/stations/w': missing property 'spec'"),
    (ORG_CHART, {"org": {"id": "a"}, "agents": {"x": {"spec": "echo"}}},
     "at '/agents/x/spec': got string, want object"),
    (ORG_CHART, {"org": {"id": "a"}, "modelProvider": {"create": True}}, "modelProvider.apiKey is required"),
    (ORG_CHART, {"org": {"id": "a"}, "natsLimits": {"streams": 3}}, "at '/natsLimits/streams'"),
    (ORG_CHART, {"org": {"id": "a"}, "natsLimits": {"connection": 3}},
     "additional properties 'connection' not allowed"),
    (PLATFORM_CHART, {"telemetry": {"otlpEndpoint": "collector:4318"}},
     "at '/telemetry/otlpEndpoint': 'collector:4318' does not match pattern"),
    (PLATFORM_CHART, {"telemetry": {"podMonitor": {"enabled": "yes"}}}, "at '/telemetry/podMonitor/enabled'"),
], ids=lambda v: v.name if hasattr(v, "name") else None)
def test_bad_values_fail_with_the_field_path(helm: Helm, chart: Any, values: dict[str, Any] | None,
                                             message: str) -> None:
    assert message in helm.template_error(chart, values)


MONITORING_APIS = ("--api-versions", "monitoring.coreos.com/v1/PodMonitor",
                   "--api-versions", "monitoring.coreos.com/v1/PrometheusRule")


def test_telemetry_reaches_the_operator_which_passes_it_to_stations(helm: Helm) -> None:
    docs = helm.template(PLATFORM_CHART, {"telemetry": {"otlpEndpoint": "http://otel.observability:4318",
                                                        "sampler": "parentbased_traceidratio", "samplerArg": "0.25"}},
                         release="station-lattice")
    (operator,) = find(docs, "Deployment", "station-lattice-operator")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.observability:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert (env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"]) == ("parentbased_traceidratio", "0.25")
    # No endpoint, no OTEL_* at all: nothing traces, nothing pays for it.
    (plain,) = find(helm.template(PLATFORM_CHART, release="station-lattice"), "Deployment",
                    "station-lattice-operator")["spec"]["template"]["spec"]["containers"]
    assert not [e for e in plain["env"] if e["name"].startswith("OTEL_")]


def test_pod_monitors_and_alerts_only_where_the_prometheus_operator_is(helm: Helm) -> None:
    assert not [d for d in helm.template(PLATFORM_CHART) if d["kind"] in ("PodMonitor", "PrometheusRule")]
    docs = helm.template(PLATFORM_CHART, release="station-lattice", extra=MONITORING_APIS)
    monitors = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodMonitor"}
    assert monitors["station-lattice-operator"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}]
    stations = monitors["station-lattice-stations"]
    assert stations["namespaceSelector"] == {"any": True}
    assert stations["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "station-lattice-operator",
                                                   "app.kubernetes.io/component": "station"}
    assert stations["podMetricsEndpoints"][0]["port"] == "health"
    off = helm.template(PLATFORM_CHART, {"telemetry": {"podMonitor": {"enabled": False},
                                                       "prometheusRule": {"enabled": False}}}, extra=MONITORING_APIS)
    assert not [d for d in off if d["kind"] in ("PodMonitor", "PrometheusRule")]
    forced = helm.template(PLATFORM_CHART, {"telemetry": {"prometheusRule": {"enabled": True}}})
    assert [d["kind"] for d in forced if d["kind"] == "PrometheusRule"] == ["PrometheusRule"]


def test_the_alert_rules_are_valid_promql(helm: Helm, tmp_path: Any) -> None:
    # promtool (Debian's prometheus package) parses every expression: a typo fails here, not in production.
    import shutil
    import subprocess

    from tests.support.telemetry import skip_or_fail

    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("no promtool on PATH: run `make telemetry-bin` (scripts/telemetry-debs.sh)")
    docs = helm.template(PLATFORM_CHART, {"telemetry": {"prometheusRule": {"waitingAlertSeconds": 120}}},
                         extra=MONITORING_APIS)
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert sorted(alerts) == ["LatticeModelErrors", "LatticeStationLost", "LatticeWorkEscalated", "LatticeWorkWaiting"]
    assert "> 120" in alerts["LatticeWorkWaiting"]["expr"]
    assert "{{ $labels.station }}" in alerts["LatticeStationLost"]["annotations"]["summary"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    checked = subprocess.run([str(promtool), "check", "rules", str(rules)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout


def test_the_dashboard_is_a_labelled_config_map_of_valid_json(helm: Helm) -> None:
    import json

    docs = helm.template(PLATFORM_CHART, release="station-lattice")
    dashboard = find(docs, "ConfigMap", "station-lattice-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["station-lattice.json"])
    titles = [p["title"] for p in board["panels"]]
    for wanted in ("Stations", "Queue depth by phase", "Latency", "Retries", "Tokens per second",
                   "Cost per hour (USD)"):
        assert wanted in titles
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ("lattice_work_items", "lattice_station_capacity", "lattice_work_requeued_total",
                   "lattice_agent_tokens_total", "lattice_agent_cost_usd_total", "gen_ai_client_operation_duration"):
        assert metric in exprs
    off = helm.template(PLATFORM_CHART, {"telemetry": {"grafanaDashboard": {"enabled": False}}})
    assert not [d for d in off if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]

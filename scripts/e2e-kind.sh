#!/usr/bin/env bash
# End to end on a real (kind) cluster: create the cluster from kind-config.yaml, build the image and load it into
# the nodes, install the platform chart and two org releases with helm, run the Helm e2e tests against them with
# USE_EXISTING_CLUSTER=1, and delete the cluster (also on failure or Ctrl-C).
#
#   bash scripts/e2e-kind.sh                 # auth none
#   LATTICE_AUTH_MODE=jwt bash scripts/e2e-kind.sh
#   KEEP_CLUSTER=1 bash scripts/e2e-kind.sh  # leave the cluster for kubectl afterwards
#   LATTICE_E2E_PLATFORM_VALUES=my.yaml ...  # extra values for the platform release (e.g. a storage class)
#
# Needs docker (a running engine), kind, and the repository's venv (make install); helm comes from PATH or is built
# by scripts/helm-bin.sh. The kind nodes pull the nats image from Docker Hub unless it is already loaded.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

CLUSTER="${KIND_CLUSTER_NAME:-station-lattice-e2e}"
IMAGE="${LATTICE_E2E_IMAGE:-station-lattice/station-lattice:e2e}"
NATS_IMAGE="${LATTICE_E2E_NATS_IMAGE:-nats:2.12-alpine}"
AUTH="${LATTICE_AUTH_MODE:-none}"
PLATFORM_NS=lattice-system
RELEASE=station-lattice
ORGS=(org-a org-b)
REPLICAS=(2 1)
PLATFORM_VALUES="${LATTICE_E2E_PLATFORM_VALUES:-}"
PY="${PYTHON:-$root/.venv/bin/python}"

log() { printf '\ne2e-kind: %s\n' "$*" >&2; }
die() { printf 'e2e-kind: error: %s\n' "$*" >&2; exit 1; }

# --- prerequisites: say exactly what is missing --------------------------------------------------------------
missing=()
command -v docker >/dev/null 2>&1 || missing+=("docker (https://docs.docker.com/engine/install/)")
command -v kind >/dev/null 2>&1 || missing+=("kind (go install sigs.k8s.io/kind@v0.32.0, or https://kind.sigs.k8s.io)")
command -v kubectl >/dev/null 2>&1 || missing+=("kubectl (https://kubernetes.io/docs/tasks/tools/; or make k8s-bin and add its bin/ to PATH)")
[[ -x "$PY" ]] || missing+=("the project venv ($PY): run make install")
if ((${#missing[@]})); then
    printf 'e2e-kind: missing prerequisites; install:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
fi
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer (is the daemon running? may you use it?)"
[[ "$AUTH" == none || "$AUTH" == jwt ]] || die "LATTICE_AUTH_MODE must be none or jwt, got $AUTH"
HELM="${HELM:-$(command -v helm || true)}"
if [[ -z "$HELM" ]]; then
    log "no helm on PATH: building it (scripts/helm-bin.sh)"
    HELM="$(bash scripts/helm-bin.sh | tail -1)"
fi

# --- cluster, torn down on any exit ----------------------------------------------------------------------------
kubeconfig="$(mktemp -t lattice-kind-kubeconfig.XXXXXX)"
workdir="$(mktemp -d -t lattice-kind.XXXXXX)"
cleanup() {
    local code=$?
    if [[ "${KEEP_CLUSTER:-}" == 1 ]]; then
        log "KEEP_CLUSTER=1: cluster $CLUSTER kept; export KUBECONFIG=$kubeconfig; kind delete cluster --name $CLUSTER"
    else
        log "deleting cluster $CLUSTER"
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        rm -f "$kubeconfig"
    fi
    rm -rf "$workdir"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$SECONDS
log "creating kind cluster $CLUSTER from kind-config.yaml"
kind create cluster --name "$CLUSTER" --config kind-config.yaml --kubeconfig "$kubeconfig" --wait 180s
export KUBECONFIG="$kubeconfig"

log "building $IMAGE and loading it (and $NATS_IMAGE) into the nodes"
# Only what the Dockerfile copies goes into the build context (not .venv, bench results or caches).
tar --create --exclude=__pycache__ --exclude='*.pyc' Dockerfile pyproject.toml README.md station_runtime operator \
    | docker build --tag "$IMAGE" -
docker image inspect "$NATS_IMAGE" >/dev/null 2>&1 || docker pull "$NATS_IMAGE"
kind load docker-image "$IMAGE" "$NATS_IMAGE" --name "$CLUSTER"

# --- the documented install: platform, then one release per org -----------------------------------------------
log "helm install $RELEASE (auth $AUTH) into $PLATFORM_NS"
install_started=$SECONDS
"$HELM" install "$RELEASE" helm/station-lattice --namespace "$PLATFORM_NS" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
    --set nats.image.repository="${NATS_IMAGE%:*}" --set nats.image.tag="${NATS_IMAGE##*:}" \
    --set nats.image.pullPolicy=IfNotPresent --set auth.mode="$AUTH" ${PLATFORM_VALUES:+--values "$PLATFORM_VALUES"} \
    --wait --timeout 5m

orgs_env=""
for i in "${!ORGS[@]}"; do
    org="${ORGS[$i]}"
    # The same values the tests install on the test control plane (tests/helm/lattice_install.py).
    "$PY" -c "import sys, yaml; from tests.helm.lattice_install import org_values; \
print(yaml.safe_dump(org_values(sys.argv[1], int(sys.argv[2]))))" "$org" "${REPLICAS[$i]}" >"$workdir/$org.yaml"
    log "helm install $org (org id $org, namespace $org)"
    "$HELM" install "$org" helm/lattice-org --namespace "$PLATFORM_NS" --values "$workdir/$org.yaml" --wait
    orgs_env+="${orgs_env:+,}$org=$org"
done

for org in "${ORGS[@]}"; do
    kubectl -n "$org" wait station/worker --for=condition=Ready --timeout=300s
done
log "install-to-Ready: $((SECONDS - install_started)) s (cluster and image: $((install_started - started)) s)"
kubectl get pods -A -l app.kubernetes.io/part-of=station-lattice -o wide

# --- the e2e tests, against this cluster ---------------------------------------------------------------------
log "pytest tests/helm -m e2e (USE_EXISTING_CLUSTER=1)"
USE_EXISTING_CLUSTER=1 LATTICE_E2E_PLATFORM_NAMESPACE="$PLATFORM_NS" LATTICE_E2E_RELEASE="$RELEASE" \
    LATTICE_E2E_ORGS="$orgs_env" LATTICE_E2E_AUTH="$AUTH" LATTICE_HELM="$HELM" \
    "$PY" -m pytest tests/helm -m e2e -p no:cacheprovider -q "$@"
log "passed in $((SECONDS - started)) s"

#!/usr/bin/env bash
# Provides helm v3 for the chart tests (`pytest -m helm`) and for installing on the test control plane.
#
# Prints the path of the helm binary on its last stdout line; progress goes to stderr, so
# `HELM=$(bash scripts/helm-bin.sh)` works.
#   1. Built once with Go from the Go module proxy only (no GitHub release, no get-helm script) into
#      ${LATTICE_CACHE:-$HOME/.cache/station-lattice}/helm/<version>/bin/helm. A `.complete` marker makes reruns
#      instant; a lock keeps two sessions from building at once. GOMODCACHE and GOCACHE stay at their defaults.
#   2. Stamped like helm's own Makefile does it: without the ldflags `helm version` says "v3.22" and
#      `helm template` (no cluster) assumes Kubernetes v1.20.
#
# HELM_VERSION overrides the version (v3.21.4 builds too; both need Go >= 1.26).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
MODULE="helm.sh/helm/v3"

log() { printf 'helm-bin: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/go-lib.sh"

[[ "$HELM_VERSION" == v3.* ]] || die "HELM_VERSION must be a helm v3 tag (v3.x.y), got $HELM_VERSION"

cache_root="${LATTICE_CACHE:-$HOME/.cache/station-lattice}"
version_dir="$cache_root/helm/${HELM_VERSION#v}"
bin="$version_dir/bin/helm"

if [[ -f "$version_dir/.complete" && -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

find_go "install Go >= 1.26, or put helm v3 on PATH"

mkdir -p "$version_dir"
exec 9>"$version_dir/.lock"
flock 9
if [[ -f "$version_dir/.complete" && -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

use_module_proxy_only

started=$SECONDS
gomodcache="$("$GO" env GOMODCACHE)"
modcache_before_kb="$( (du -sk "$gomodcache" 2>/dev/null || echo 0) | cut -f1)"
log "building helm $HELM_VERSION with $("$GO" version | cut -d' ' -f3) into $bin (GOPROXY=$GOPROXY)"

# helm's Makefile derives the Kubernetes version `helm template` assumes from the client-go it builds with.
work="$version_dir/work"
mkdir -p "$work"
dl_json="$(cd "$work" && "$GO" mod download -json "$MODULE@$HELM_VERSION")" \
    || die "$MODULE@$HELM_VERSION not served by $GOPROXY"
gomod="$(sed -n 's/.*"GoMod": *"\([^"]*\)".*/\1/p' <<<"$dl_json")"
[[ -f "$gomod" ]] || die "unexpected go mod download output: $dl_json"
client_go="$(sed -n 's|^[[:space:]]*k8s.io/client-go v\([0-9.]*\).*|\1|p' "$gomod" | head -1)"
[[ "$client_go" =~ ^0\.([0-9]+)\. ]] || die "no k8s.io/client-go v0.x.y in $gomod"
k8s_minor="${BASH_REMATCH[1]}"

ldflags="-s -w -X $MODULE/internal/version.version=$HELM_VERSION -X $MODULE/internal/version.metadata="
ldflags+=" -X $MODULE/internal/version.gitCommit= -X $MODULE/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X $MODULE/$pkg.k8sVersionMajor=1 -X $MODULE/$pkg.k8sVersionMinor=$k8s_minor"
done

tmp_bin="$version_dir/bin.partial"
rm -rf "$tmp_bin" && mkdir -p "$tmp_bin"
log "go install $MODULE/cmd/helm@$HELM_VERSION (nice 10; Kubernetes 1.$k8s_minor for offline rendering)"
(cd "$work" && GOBIN="$tmp_bin" nice -n 10 "$GO" install -trimpath -ldflags "$ldflags" \
    "$MODULE/cmd/helm@$HELM_VERSION") || die "go install of helm failed"

"$tmp_bin/helm" version >&2
rm -rf "$version_dir/bin" && mv "$tmp_bin" "$version_dir/bin"
elapsed=$((SECONDS - started))
modcache_after_kb="$(du -sk "$gomodcache" | cut -f1)"
{
    echo "helm_version=$HELM_VERSION"
    echo "client_go=v$client_go"
    echo "go_version=$("$GO" env GOVERSION)"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$elapsed"
    echo "bin_kb=$(du -sk "$bin" | cut -f1)"
    echo "gomodcache_growth_kb=$((modcache_after_kb - modcache_before_kb))"
    echo "gocache_kb=$(du -sk "$("$GO" env GOCACHE)" | cut -f1)"
} >"$version_dir/build-info.txt"
touch "$version_dir/.complete"
log "done in ${elapsed} s; $(tr '\n' ' ' <"$version_dir/build-info.txt")"
echo "$bin"

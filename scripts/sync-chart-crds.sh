#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, the single source) into the platform chart's crds/ directory.
#
#   bash scripts/sync-chart-crds.sh          copy (removes chart CRDs that no longer exist in crds/)
#   bash scripts/sync-chart-crds.sh --check  exit 1 and list the differences instead of copying
#
# tests/helm/test_crd_drift.py fails when the copies differ, naming this script.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
dst="$root/helm/station-lattice/crds"
check=0
[[ "${1:-}" == "--check" ]] && check=1

shopt -s nullglob
sources=("$src"/*.yaml)
((${#sources[@]})) || { echo "sync-chart-crds: no CRDs in $src" >&2; exit 1; }

if ((check)); then
    if diff -r --exclude='.*' "$src" "$dst" >&2; then
        echo "sync-chart-crds: $dst matches $src"
        exit 0
    fi
    echo "sync-chart-crds: $dst differs from $src: run bash scripts/sync-chart-crds.sh" >&2
    exit 1
fi

mkdir -p "$dst"
for stale in "$dst"/*.yaml; do
    [[ -f "$src/$(basename "$stale")" ]] || { rm -f "$stale"; echo "sync-chart-crds: removed $(basename "$stale")"; }
done
cp "${sources[@]}" "$dst/"
echo "sync-chart-crds: copied ${#sources[@]} CRD(s) into ${dst#"$root"/}"

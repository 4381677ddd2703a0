#!/usr/bin/env bash
# Provides an OpenTelemetry Collector for the tracing tests (`pytest -m telemetry`): an OTLP receiver (HTTP and
# gRPC) and a file exporter that writes what it receives as OTLP JSON lines, which the tests read back.
#
# Prints the path of the binary on its last stdout line; progress goes to stderr, so
# `OTELCOL=$(bash scripts/otelcol-bin.sh)` works.
#   1. Built once with the Collector's own builder (go.opentelemetry.io/collector/cmd/builder, which `go install`
#      accepts) from the small manifest below, from the Go module proxy only, into
#      ${LATTICE_CACHE:-$HOME/.cache/station-lattice}/otelcol/<version>/otelcol-lattice. A `.complete` marker
#      makes reruns instant; a lock keeps two sessions from building at once.
#   2. Every module at one Collector release (core vX.Y.Z = v0.N, its stable modules v1.M, contrib v0.N): mixing
#      releases does not build. OTELCOL_VERSION / OTELCOL_STABLE override them together.
set -euo pipefail

OTELCOL_VERSION="${OTELCOL_VERSION:-0.161.0}"
OTELCOL_STABLE="${OTELCOL_STABLE:-1.67.0}"

log() { printf 'otelcol-bin: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
source "$(dirname "${BASH_SOURCE[0]}")/go-lib.sh"

cache_root="${LATTICE_CACHE:-$HOME/.cache/station-lattice}"
version_dir="$cache_root/otelcol/$OTELCOL_VERSION"
bin="$version_dir/otelcol-lattice"

if [[ -f "$version_dir/.complete" && -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

find_go "install Go >= 1.24 to build the Collector"

mkdir -p "$version_dir"
exec 9>"$version_dir/.lock"
flock 9
if [[ -f "$version_dir/.complete" && -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

use_module_proxy_only

started=$SECONDS
work="$version_dir/work"
mkdir -p "$work/bin"
log "installing the Collector builder v$OTELCOL_VERSION (GOPROXY=$GOPROXY)"
GOBIN="$work/bin" nice -n 10 "$GO" install "go.opentelemetry.io/collector/cmd/builder@v$OTELCOL_VERSION" \
    || die "go.opentelemetry.io/collector/cmd/builder@v$OTELCOL_VERSION not served by $GOPROXY"

cat >"$work/manifest.yaml" <<EOF
dist:
  name: otelcol-lattice
  description: OTLP in, OTLP JSON files out (Station Lattice's tracing tests)
  output_path: $work/dist
  version: $OTELCOL_VERSION
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v$OTELCOL_VERSION
exporters:
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter v$OTELCOL_VERSION
providers:
  - gomod: go.opentelemetry.io/collector/confmap/provider/fileprovider v$OTELCOL_STABLE
  - gomod: go.opentelemetry.io/collector/confmap/provider/envprovider v$OTELCOL_STABLE
EOF

log "building otelcol-lattice (otlp receiver + file exporter) into $bin (nice 10; a few minutes the first time)"
(cd "$work" && nice -n 10 "$work/bin/builder" --config manifest.yaml >&2) || die "the Collector builder failed"
install -m 0755 "$work/dist/otelcol-lattice" "$bin"
"$bin" --version >&2 || die "the built Collector does not run"
rm -rf "$work/dist"
touch "$version_dir/.complete"
log "done in $((SECONDS - started)) s"
echo "$bin"

#!/usr/bin/env bash
# Provides Prometheus for the metrics tests (`pytest -m telemetry`): Debian's `prometheus` package (installed once
# if this is Debian and we may install; the package's service is not started: the tests run their own server on
# loopback). Prints the binary's path on its last stdout line; progress goes to stderr.
set -euo pipefail
log() { printf 'prometheus-bin: %s\n' "$*" >&2; }

if bin="$(command -v prometheus)"; then
    echo "$bin"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no prometheus on PATH and no apt-get: install Prometheus >= 2.40 and put it on PATH"
    exit 1
fi
sudo=""
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { log "no prometheus on PATH; run as root or install the prometheus package"; exit 1; }
    sudo="sudo -n"
fi
log "installing Debian's prometheus package (once)"
# policy-rc.d-free containers: the package's postinst may fail to start a service; the binary is what we need.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus >&2 \
    || { $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y \
         --no-install-recommends prometheus >&2; } || { command -v prometheus >/dev/null 2>&1 || exit 1; }
command -v prometheus

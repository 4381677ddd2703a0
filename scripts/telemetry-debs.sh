#!/usr/bin/env bash
# Debian packages the telemetry tests use (`pytest -m telemetry`): prometheus (and its promtool) for the metrics
# tests, tmux for the `lattice top` screen test. Installed once if missing and we may install (root, or sudo
# without a password); their services are not started: the tests run their own servers on loopback. Idempotent.
set -euo pipefail
log() { printf 'telemetry-debs: %s\n' "$*" >&2; }

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
[[ ${#missing[@]} -eq 0 ]] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    log "missing ${missing[*]} and no apt-get: install them (Prometheus >= 2.40) and put them on PATH"
    exit 1
fi
sudo=""
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { log "missing ${missing[*]}: run as root or install them"; exit 1; }
    sudo="sudo -n"
fi
log "installing Debian's ${missing[*]} (once)"
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
install || { $sudo apt-get update -qq >&2 && install; }
for tool in "${missing[@]}"; do command -v "$tool" >/dev/null 2>&1 || { log "$tool did not install"; exit 1; }; done

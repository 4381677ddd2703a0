#!/usr/bin/env bash
# Installs what the benchmarks compare against, only if missing: redis-server (Debian) and the `bench` extra
# (Celery, taskiq, Temporal's SDK and CLI, redis-py, matplotlib, pyinstrument) into the venv. Idempotent; `python -m bench run` calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench/setup.sh: redis-server is missing and we are not root: apt-get install -y redis-server" >&2
        exit 1
    fi
    echo "bench/setup.sh: installing redis-server (Debian)"
    if ! apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >/dev/null
    fi
    # The package's service is not needed: the runner starts its own redis-server on a free loopback port.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi

if ! "$PY" -c "import celery, taskiq, taskiq_nats, taskiq_redis, redis, matplotlib, pyinstrument, temporalio" 2>/dev/null \
        || [ ! -x "$(dirname "$PY")/temporal" ]; then
    echo "bench/setup.sh: installing the bench extra into the venv"
    "$PY" -m pip install --quiet --disable-pip-version-check -e '.[bench]'
fi

# Station Lattice. Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# Re-install whenever pyproject.toml changes; otherwise the install step is a no-op.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck unit k8s-bin helm-bin telemetry-bin cluster bench bench-quick e2e-kind clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: install
	$(BIN)/lattice demo

lint: install
	$(BIN)/ruff check station_runtime operator tests bench
	$(BIN)/lint-imports pyproject.toml

typecheck: install
	$(BIN)/mypy

# Builds (once, cached under ~/.cache/station-lattice) the Kubernetes control-plane binaries where Go exists.
k8s-bin:
	@if [ -n "$$KUBEBUILDER_ASSETS" ] || command -v go >/dev/null 2>&1; then \
		bash scripts/k8s-bin.sh; \
	else \
		echo "k8s-bin: no Go toolchain and no KUBEBUILDER_ASSETS; Kubernetes tests will skip"; \
	fi

# Builds (once, cached under ~/.cache/station-lattice) helm v3 for the chart tests where Go exists.
helm-bin:
	@if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then \
		bash scripts/helm-bin.sh >/dev/null; \
	else \
		echo "helm-bin: no Go toolchain; Helm tests use helm v3 from PATH or LATTICE_HELM, else skip"; \
	fi

# Builds (once, cached) the OpenTelemetry Collector where Go exists, and installs Debian's prometheus and tmux where
# apt may: the receivers and the screen of the telemetry tests (without them those tests skip, saying so).
telemetry-bin:
	@if command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ]; then \
		bash scripts/otelcol-bin.sh >/dev/null; \
	else \
		echo "telemetry-bin: no Go toolchain; the tracing tests will skip"; \
	fi
	@bash scripts/telemetry-debs.sh || echo "telemetry-bin: no prometheus or tmux; their tests will skip"

test: install lint typecheck k8s-bin helm-bin telemetry-bin
	$(BIN)/pytest $(PYTEST_ARGS)

# For users with Docker and kind: cluster from kind-config.yaml, image, charts (platform + two orgs), e2e, teardown.
e2e-kind: install
	bash scripts/e2e-kind.sh

unit: install
	$(BIN)/pytest -m "not k8s and not e2e and not fault and not helm and not telemetry" $(PYTEST_ARGS)

cluster: install k8s-bin
	$(PY) -m tests.support.cluster

clean:
	rm -rf $(VENV) .lattice .mypy_cache .ruff_cache .pytest_cache

bench: install
	$(PY) -m bench run --full

bench-quick: install
	$(PY) -m bench run --quick

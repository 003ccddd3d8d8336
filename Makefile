# Every target installs what it needs first, so each works on a fresh machine.
#   make run    record the ETH top 50 (ticker + trades) from Deribit into an embedded PostgreSQL
#   make test   every tier: unit, integration (PostgreSQL, TimescaleDB + simulator) with the failure
#               drills run short, Kubernetes (real control plane), image (containerd) and node (a real
#               kubelet running the image's pods); plain `pytest` runs unit + integration, no drills
#   make image  the container image as OCI archives, build/image/optionfeed-<version>-{amd64,arm64}.oci.tar
#   make demo   simulator + collector + embedded PostgreSQL, no network needed
#   make bench  benchmarks: print figures and the commands that made them
#   make drills the failure drills at full length
#   make lint   ruff (format + lint), mypy, import contracts, actionlint (.github/workflows)

SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
# The project's own uv (a uv elsewhere on PATH may not read this uv.lock the same way).
UV := $(TOOLS)/bin/uv
VENV := .venv
SYNCED := $(VENV)/.synced
RUN := $(UV) run --frozen --no-sync

export UV_PYTHON_DOWNLOADS := never

.PHONY: setup run test demo bench drills lint actionlint format postgres timescaledb prometheus k8s otel-receiver image containerd node dashboard clean

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv

$(SYNCED): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	@touch $@

setup: $(SYNCED)

# PostgreSQL server binaries for the tests (Debian's packages); a no-op when present.
postgres:
	@tests/harness/ensure-postgres.sh

# TimescaleDB built from tests/vendor/ into a copy of the PostgreSQL server binaries, cached
# outside the tree; the system's server stays plain.
timescaledb: postgres
	@tests/harness/build-timescaledb.sh >/dev/null

# prometheus and promtool for the alert-rule and scrape tests (Debian's package); a no-op when present.
prometheus:
	@tests/harness/ensure-prometheus.sh

# kube-apiserver, etcd, kwok, helm... built from Go modules and cached outside the tree; Debian's
# openssl for the test cluster's certificates, installed when missing.
k8s:
	@[ -x /usr/bin/openssl ] || { . tests/harness/apt-install.sh && apt_install openssl; }
	@tests/harness/build-control-plane.sh

# The OTLP receiver the tracing tests export to (an OpenTelemetry Collector), built from Go modules
# and cached outside the tree.
otel-receiver:
	@tests/harness/build-otel-receiver.sh

# The image for linux/amd64 and linux/arm64 from Debian's packages and the locked wheels, with no
# container engine (image/build.py, as root); a no-op when its inputs have not changed.
image: setup
	UV=$(UV) $(RUN) python image/build.py $(IMAGE_ARGS)

# containerd and runc (Debian's packages) for the image tests, which start their own containerd.
containerd:
	@tests/harness/ensure-containerd.sh

# A real node for tests/node, whose pods run the image: Debian's containerd, runc and CNI plugins
# (installed when missing), the kubelet and a pause image (built and cached beside the control plane).
node: k8s image containerd
	@tests/harness/ensure-node.sh
	@tests/harness/build-node.sh >/dev/null

run: setup
	$(RUN) optionfeed collect --currency ETH --top 50 --channels ticker,trades

demo: setup
	$(RUN) optionfeed demo $(if $(DURATION),--duration $(DURATION))

# Every tier, drills included (-m "" lifts pyproject's `-m 'not drill'`); TEST_PATHS narrows it.
TEST_PATHS ?= tests/unit tests/integration tests/kube tests/image tests/node

test: setup postgres timescaledb prometheus k8s otel-receiver image containerd node
	$(RUN) pytest -m "" $(TEST_PATHS) $(PYTEST_ARGS)

# The failure drills only (tests/integration/test_drills.py), at full length.
drills: setup postgres
	OPTIONFEED_DRILLS=full $(RUN) pytest -m drill --timeout 3600 $(PYTEST_ARGS)

bench: setup postgres
	$(RUN) python tests/bench/run.py $(BENCH_ARGS)

lint: setup actionlint
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy
	$(RUN) lint-imports
	$(ACTIONLINT)

# actionlint for the GitHub workflows, built from its Go module and cached outside the tree (about
# 20 s, once). With no argument it checks every file in .github/workflows, and runs shellcheck on
# their scripts when shellcheck is on PATH.
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT_DIR := $(or $(OPTIONFEED_CACHE),$(HOME)/.cache/optionfeed)/actionlint-$(ACTIONLINT_VERSION)
ACTIONLINT := $(ACTIONLINT_DIR)/actionlint

$(ACTIONLINT):
	GOTOOLCHAIN=local GOBIN=$(ACTIONLINT_DIR) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

actionlint: $(ACTIONLINT)

# Rebuild the Grafana dashboard JSON (charts/optionfeed/files/) from charts/optionfeed/dashboards/.
dashboard: setup
	$(RUN) python charts/optionfeed/dashboards/build.py

format: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache

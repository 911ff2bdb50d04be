# posync: two commands do everything on a fresh machine.
#   make demo   the main job: embedded AWS, Clover and Poynt sandboxes, merchants connect, a sync, exports
#   make test   lint, types, unit, integration, infra and end-to-end tests
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
CDK := node_modules/.bin/cdk
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export CDK_DISABLE_VERSION_CHECK := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help lock install test lint typecheck unit integration infra e2e chaos bench demo synth layer test-localstack clean

help:
	@echo "make demo   - run the main job locally (no AWS account, no Docker)"
	@echo "make test   - the whole test suite (installs what it needs)"
	@echo "make synth  - synthesize the CDK app offline (pinned aws-cdk CLI)"
	@echo "make bench  - sync engine benchmarks (prints a JSON summary)"
	@echo "make chaos  - the fault-injection suite alone"

$(UV):
	python3 -m pip install --quiet --disable-pip-version-check --target .tools uv==$(UV_VERSION)

# requirements.lock pins every package with its hashes (regenerate with `make lock`).
$(VENV)/.synced: $(UV) requirements.lock pyproject.toml
	$(UV) venv --quiet --allow-existing --python python3 $(VENV)
	$(UV) pip sync --quiet --python $(PY) requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	@touch $@

lock: $(UV)
	$(UV) pip compile pyproject.toml --group dev --generate-hashes --python-version 3.11 --quiet -o requirements.lock
	$(UV) pip compile pyproject.toml --generate-hashes --python-version 3.12 \
	  --python-platform aarch64-manylinux2014 --quiet -o layers/dependencies/requirements.txt

$(CDK): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.synced $(CDK)

# Debian's Chromium for the browser test (the e2e tests skip with a reason if it cannot be had).
/usr/bin/chromium:
	@if [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the e2e tests will be skipped"; \
	else echo "warning: not root, chromium not installed; the e2e tests will be skipped"; fi

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.synced
	$(VENV)/bin/mypy layers/posync/python/posync local/posync_local functions infra tests $(wildcard bench)

# Two workers (these machines have 2 cores); a file's tests stay on one worker (its fixtures).
PYTEST_WORKERS ?= 2
test: install /usr/bin/chromium lint typecheck
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

unit: $(VENV)/.synced
	$(VENV)/bin/pytest -q tests/unit

integration: install
	$(VENV)/bin/pytest -q tests/integration

infra: install
	$(VENV)/bin/pytest -q tests/infra

e2e: install /usr/bin/chromium
	$(VENV)/bin/pytest -q tests/e2e

chaos: install
	$(VENV)/bin/pytest -q -m chaos tests

synth: install
	$(CDK) synth --quiet

# The dependency layer (build/layers/deps), rebuilt only when its inputs' hash changes; synth builds it too.
layer: $(VENV)/.synced
	$(PY) -m infra.layer_build

bench: install
	$(PY) -m bench.run

demo: install
	$(VENV)/bin/posync demo

test-localstack: install
	docker compose -f local/docker-compose.yml up -d --wait
	AWS_ENDPOINT_URL=http://127.0.0.1:4566 POSYNC_EXTERNAL_AWS=1 $(VENV)/bin/pytest -q tests/integration

clean:
	rm -rf $(VENV) .tools node_modules cdk.out build

# Gongji developer commands. Every target sets up its own virtual environment first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BUF := tools/node_modules/.bin/buf
TOOLS_STAMP := tools/node_modules/.installed-stamp

.PHONY: setup tools run test test-browser test-crash demo bench bench-scale protos protos-check protos-breaking errors-doc lint migration clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# npm ci installs exactly what tools/package-lock.json pins; the package ships buf's binary, no install script needed.
$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	cd tools && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(TOOLS_STAMP)

## The protos' command-line tools, pinned in tools/package-lock.json: buf (lint, breaking changes).
tools: $(TOOLS_STAMP)

## Serve the gateway (127.0.0.1:50051, operators on :50052) and two stub provinces (650000 on :50061, 620000 on :50062).
run: setup
	$(PY) -m scripts.devstack

## Play the seeds' story against a running `make run`.
demo: setup
	$(PY) -m scripts.demo

## The test suite (real servers on port 0, real SQLite, and PostgreSQL when reachable; required when CI=true),
## spread over every core by pytest-xdist.
## tests/browser is left to `make test-browser`.
test: setup
	$(PY) -m pytest -q -n auto

## The operators' dashboard in real headless Chromium (installs Debian's chromium and chromium-driver when missing).
test-browser: setup
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q tests/browser

## Crash and fault tests (kill -9 under load, provinces down or slow, connections cut, graceful stop, two gateways
## on one PostgreSQL): real processes on 127.0.0.1, a few minutes. tests/crash is left out of `make test`.
test-crash: setup
	$(PY) -m pytest -q -s tests/crash

## The real flow against the echo, relays doing no work and the contract's floor, in one run; writes bench/results/latest.json.
bench: setup
	$(PY) -m bench

## The gateway at 200,000 and 2,000,000 seeded committed transfers (BENCH_SCALE_ROWS), on SQLite and PostgreSQL,
## with the provinces' steady traffic and the operators' scrapes; writes bench/results/scale.json (docs/benchmark.md).
bench-scale: setup
	$(PY) -m bench.scale

protos: setup
	bash scripts/gen_protos.sh

protos-check: setup
	bash scripts/check_protos.sh

## docs/errors.md from the reasons catalogue (gateway/domain/reasons.py); `make lint` fails when it is not current.
errors-doc: setup
	$(PY) -m scripts.errors_doc

## buf breaking: the protos keep what the previous commit's protos promised (skipped where that commit has no buf.yaml).
protos-breaking: tools
	bash scripts/check_breaking.sh

lint: setup tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(BUF) lint
	$(PY) -m scripts.errors_doc --check

## A new schema migration from what gateway/store/tables/ adds to head: make migration m="what it changes".
migration: setup
	$(PY) -m scripts.new_migration "$(m)"

clean:
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache

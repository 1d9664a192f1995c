# LLM Registry — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.dev-installed
PYTEST_ARGS ?= -n 2

.DEFAULT_GOAL := help
.PHONY: fuzz bench bench-compare bench-gunicorn bench-relay help install dev-install run serve migrate test test-fast lint format typecheck bench-blobs services lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed (PYTHON=$(PYTHON))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

install: $(STAMP) ## Create .venv with the registry and its `llm-registry` command

$(DEVSTAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	@touch $@

dev-install: $(DEVSTAMP) ## install, plus the test and lint tools

run: install ## Migrate and start the registry on http://localhost:8080 (embedded defaults)
	REGISTRY_ENV=$${REGISTRY_ENV:-development} $(BIN)/llm-registry run

migrate: install ## Upgrade the database to the newest migration
	$(BIN)/llm-registry migrate

lint: dev-install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: dev-install ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: dev-install ## mypy only
	$(BIN)/mypy

test: dev-install lint ## Lint, then the whole test suite against the real services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: dev-install ## The test suite without lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-blobs: dev-install ## Upload and verify a 2 GiB blob; print MB/s (vs openssl) and peak RSS
	$(BIN)/python bench/bench_blobs.py --size-gib $${SIZE_GIB:-2}

fuzz: dev-install ## schemathesis against a live server, long: FUZZ_MAX_EXAMPLES=100 per operation, 30 min, random seed
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-100} FUZZ_MAX_TIME=$${FUZZ_MAX_TIME:-1800} FUZZ_SEED=$${FUZZ_SEED:-} \
		$(BIN)/python -m pytest tests/e2e/test_server.py -k schemathesis -s -p no:cacheprovider --timeout 0

bench: dev-install ## Service-mode load with wrk (reads, writes, end to end, graph, 1M-row lists) next to a bare-Flask ceiling, then checksum vs openssl
	$(BIN)/python bench/bench_http.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_blobs.py --size-gib $${SIZE_GIB:-1}

bench-compare: dev-install ## The same read and write loads against MLflow's Model Registry (own venv, same machine, same run); prints the ratios
	$(BIN)/python bench/bench_http.py --compare-mlflow $(BENCH_ARGS)

bench-gunicorn: dev-install ## gunicorn processes x threads matrix: ceiling, warm GET and 202 POST per setting (SETTINGS=2x1,4x1)
	$(BIN)/python bench/bench_gunicorn.py $${SETTINGS:+--settings $$SETTINGS}

bench-relay: dev-install ## Write 5,000 events and publish them to a private NATS; print events/s
	$(BIN)/python bench/bench_relay.py

services: ## Start PostgreSQL, Redis and NATS on 127.0.0.1 if they are not answering
	bash scripts/services.sh

lock: ## Re-pin requirements.txt from a clean venv (after changing pyproject ranges)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q .
	{ echo "# Runtime dependencies, pinned (the top-level ranges are in pyproject.toml)."; \
	  echo "# Regenerate: make lock"; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^llm-registry'; } > requirements.txt
	rm -rf .lock-venv

clean: ## Remove .venv, ./var and caches
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:/usr/sbin:/sbin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup run test test-tools bench-review bench-training bench-loop test-fast lint format bench models clean cloud-schema settings-table screenshots compose

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

setup: ## Install Debian packages, the venv and Python dependencies (idempotent)
	@VENV=$(VENV) scripts/bootstrap.sh

run: setup ## Start the cloud (http://127.0.0.1:8000) and the edge (gateway on http://127.0.0.1:30101); Ctrl-C stops it
	$(PY) -m launcher run

test: setup test-tools ## Run every test, slow end-to-end ones included, with line coverage (>= 85 %)
	@rm -rf build/coverage && mkdir -p build/coverage
	$(PY) -m pytest -q -p no:cacheprovider --cov --cov-report=term --cov-fail-under=85

test-tools: ## Install what the tests need besides the venv (Debian chromium, Azurite)
	@VENV=$(VENV) scripts/bootstrap.sh --test

test-fast: setup ## The in-process layer: no service, browser or tool process, SQLite (under 2 minutes)
	@rm -rf build/coverage && mkdir -p build/coverage
	IO_TEST_LAYER=fast CLOUD_TEST_DB=sqlite $(PY) -m pytest -q -p no:cacheprovider --cov --cov-report=term

lint: setup ## ruff check, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy common edge cloud training launcher bench

format: setup ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

models: setup ## Build the demo detector bundles into .intellioptics/data/models
	$(PY) -m training.demo_bundles --model-root .intellioptics/data/models

bench: setup ## Edge throughput benchmark (writes bench/results/edge_throughput.json)
	$(PY) -m bench.edge_throughput

bench-review: setup ## Review-queue benchmark on PostgreSQL (writes bench/results/review_queue.json)
	$(PY) -m bench.review_queue

bench-training: setup ## Training-quality benchmark on MNIST 5k (writes bench/results/training_quality.json)
	$(PY) -m bench.training_quality

bench-loop: setup ## Closed-loop learning benchmark, whole system (writes bench/results/learning_loop.json)
	$(PY) -m bench.learning_loop

screenshots: setup test-tools ## Every review page at 1920x1080 and 390x844, and dark mode (writes bench/results/ui/)
	$(PY) -m bench.screenshots

clean: ## Remove local state (models, databases), keep the venv
	rm -rf .intellioptics

settings-table: setup ## Regenerate README.md's settings tables from the services' settings classes
	$(PY) scripts/settings_table.py --write

compose: setup ## Regenerate docker-compose.{edge,cloud,gpu}.yml from launcher/services.py
	$(PY) -m launcher.compose

cloud-schema: setup ## Regenerate the initial cloud migration from cloud/app/db/models.py (before the first release only)
	rm -f cloud/app/db/migrations/versions/0001_initial_schema.py /tmp/io-schema.db
	$(PY) -c "from alembic import command; from cloud.app.db.migrate import alembic_config; command.revision(alembic_config('sqlite+aiosqlite:////tmp/io-schema.db'), message='initial schema', autogenerate=True, rev_id='0001')"
	$(VENV)/bin/ruff format cloud/app/db/migrations
	$(VENV)/bin/ruff check --fix -q cloud/app/db/migrations

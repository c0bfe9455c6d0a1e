# rxrec: `make demo` runs the whole chain end to end; `make test` sets up and passes the tests.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export RXREC_TRITON_VENV ?= $(CURDIR)/.venv-triton
# pip on this machine warns about every unreachable extra index; keep real errors, drop that noise.
QUIET_PIP := 2>&1 | { grep -v -e "is ignored: it is neither" -e "^\s*$$" || true; }
PYTEST_ARGS ?=

.PHONY: help setup demo test test-fast lint mlflow serve serve-stop clean distclean airflow airflow-stop browser-deps stack stack-stop audit

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	@echo "▶ creating $(VENV) (torch 2.13.0 CPU first, then rxrec, its test tools and local services)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip $(QUIET_PIP)
	$(BIN)/pip install -q torch==2.13.0 $(QUIET_PIP)
	$(BIN)/pip install -q -e '.[dev,stack]' $(QUIET_PIP)
	touch $@

setup: $(BIN)/.installed  ## create both environments (main, Triton serving); quick when they exist
	bash infra/triton/setup.sh

demo: setup  ## run data → validation → embeddings → GPT4Rec → MLflow → ONNX → real Triton
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/rxrec demo

test: lint browser-deps audit  ## lint, then every test, the slow end-to-end ones included (what CI runs), two workers
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

test-fast: setup  ## skip the slow end-to-end tests (real Airflow, real Triton), two workers (a module stays on one)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile $(PYTEST_ARGS)

audit: setup  ## dependency audit (pip-audit + the index): reports/audit.{json,md}; fails on an untriaged vulnerability
	$(BIN)/python -m pipelines.audit

lint: setup  ## ruff, the layer contracts (import-linter), declared = imported dependencies (deptry)
	$(BIN)/ruff check pipelines benchmarks dags infra tests
	$(BIN)/lint-imports
	$(BIN)/deptry pipelines benchmarks dags infra
	@# tests may import the dev and stack extras too; they must not lean on a transitive package either
	$(BIN)/deptry tests --exclude '^$$' --known-first-party pipelines --known-first-party benchmarks \
	  --known-first-party tests --optional-dependencies-dev-groups dev --optional-dependencies-dev-groups stack \
	  --ignore DEP002,DEP004

mlflow: setup  ## MLflow UI/server on 127.0.0.1:5000 over the embedded store (Ctrl-C stops it)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash mlflow/server.sh

s3: setup  ## local S3 emulator (moto) on 127.0.0.1:5555 for the DVC `s3` remote (Ctrl-C stops it)
	$(BIN)/python infra/s3/server.py

serve: setup  ## tritonserver on 127.0.0.1 (params.yaml serve ports) in the background, every model of triton_repo/ loaded
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/rxrec serve start

serve-stop:  ## stop the tritonserver that `make serve` started
	$(BIN)/rxrec serve stop

airflow: setup  ## Airflow 3 on 127.0.0.1:8080 (API server + UI, scheduler, DAG processor, triggerer) in the background
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python infra/airflow/launcher.py start

airflow-stop:  ## stop the Airflow that `make airflow` started (SIGINT, then waits)
	$(BIN)/python infra/airflow/launcher.py stop

stack: setup  ## the distributed stack on 127.0.0.1: Postgres, Redis, S3 (moto), MLflow, Airflow Celery (2 workers), Triton
	bash infra/stack/setup.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python infra/stack/stack.py start

stack-stop:  ## stop every service `make stack` started (none left behind)
	$(BIN)/python infra/stack/stack.py stop

browser-deps:  ## Debian's chromium + chromedriver for the browser tests (apt-get; skipped when present)
	bash infra/airflow/browser-deps.sh

clean:  ## remove pipeline outputs and local service state (keeps the environments)
	rm -rf data artifacts reports/pipeline var triton_repo/*/[0-9]* .dvc/tmp dvc.lock

distclean: clean  ## also remove both environments
	rm -rf $(VENV) $(RXREC_TRITON_VENV)

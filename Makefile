# One machine, nothing installed by hand: the first target that needs the environment creates it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
MLPLATFORM_HOME := $(CURDIR)/.local
BOOTSTRAP := $(MLPLATFORM_HOME)/bootstrap
UV := $(BOOTSTRAP)/bin/uv
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin

# Embedded defaults (DESIGN.md): everything under .local/, git-ignored; `make clean` removes it.
export MLPLATFORM_HOME
export PIPELINE_RUNTIME ?= local
export ARTIFACT_ROOT ?= file://$(MLPLATFORM_HOME)/artifacts
export WAREHOUSE_URI ?= sqlite:///$(MLPLATFORM_HOME)/warehouse.db
export MLFLOW_TRACKING_URI ?= sqlite:///$(MLPLATFORM_HOME)/mlflow.db
export AIRFLOW_HOME ?= $(MLPLATFORM_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION := True
export PYTHONPATH := $(CURDIR)/dags:$(CURDIR)
export PATH := $(BIN):$(PATH)
export UV_PROJECT_ENVIRONMENT := $(VENV)

SEED_ARGS ?= --customers 10000 --events-per-customer 40 --seed 42
SHAPE ?= demo
# Benchmark sizes: events of the feature-build benchmark, options of each script (see bench/README.md)
BENCH_EVENTS ?= 10000000
BENCH_ARGS ?=
BENCH_RETAIL_ARGS ?= --sizes 2500,5000,10000 --quality-size 5000
BENCH_SHAPES_ARGS ?= --customers 10000
# make bench-scale: sizes in customers x 40 events (10 M and 50 M events), side by side in one run
SCALE_CUSTOMERS ?= 250000,1250000
SCALE_ARGS ?=
GPU_POOL_SLOTS ?= 2
AIRFLOW_PORT ?= 8080
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
# The end-to-end tests each run whole DAGs, mostly one step process at a time: one worker per core, a test
# module per worker (its tests share a platform). PYTEST_PARALLEL= runs them in one process.
PYTEST_PARALLEL ?= -n auto --dist loadfile

.PHONY: help venv seed airflow-db pools run summary test test-fast test-scheduler test-ui ui serve request bench bench-scale chart-deps render images kind-test clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock pyproject.toml contract/pyproject.toml images/features/pyproject.toml images/trainer/pyproject.toml images/mlflow/pyproject.toml
	$(UV) sync --frozen --all-packages
	touch $@

venv: $(VENV)/.synced ## Create the environment from the lock file

seed: venv ## Generate the demo warehouse (SEED_ARGS: size or drift; SHAPE=retail|feature-table|multiclass|regression)
	$(BIN)/python -m features seed --shape $(SHAPE) $(SEED_ARGS)

$(AIRFLOW_HOME)/.migrated: $(VENV)/.synced
	mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (tail -50 $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	touch $@

airflow-db: $(AIRFLOW_HOME)/.migrated

pools: airflow-db ## Create the Airflow pools the DAGs use
	$(BIN)/airflow pools set gpu_pool $(GPU_POOL_SLOTS) "GPU node pool: one slot per trainer pod" > /dev/null

run: seed pools ## Set up, run the training pipeline once on the embedded default, print a summary
	@echo "== running ml_model_training (task logs: $(AIRFLOW_HOME)/dags-test.log)"
	@TASK_RETRIES=$${TASK_RETRIES:-0} $(BIN)/airflow dags test ml_model_training > $(AIRFLOW_HOME)/dags-test.log 2>&1 \
		|| (grep -E "ERROR|Error|error|failed" $(AIRFLOW_HOME)/dags-test.log | tail -30; \
		    echo "the run failed: full log in $(AIRFLOW_HOME)/dags-test.log"; exit 1)
	@$(BIN)/python -m devtools.cli summary

summary: venv ## Print the summary of the latest training run
	@$(BIN)/python -m devtools.cli summary

test: venv ## Run the tests (unit, DAG, pod and chart, end to end)
	$(BIN)/pytest $(PYTEST_PARALLEL)

test-fast: venv ## Run the tests without the end-to-end tier
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not e2e and not scheduler"

test-scheduler: venv ## The real scheduler + REST API tier: a manual run with Params, as from the UI (minutes)
	$(BIN)/pytest -m scheduler

# The browser tier drives Debian's Chromium with Playwright's Python client (its driver ships in the wheel; no
# browser download). Both are installed here, not by the lock, so `make test` never needs them.
PLAYWRIGHT_VERSION := 1.65.2
test-ui: venv ## Browser tier: trigger forms, a run from the form, the MLflow UI in Chromium (build/test-ui/; minutes)
	@command -v chromium > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; }
	$(UV) pip install --quiet --python $(BIN)/python "playwright==$(PLAYWRIGHT_VERSION)"
	$(BIN)/pytest -m ui tests/ui

ui: pools ## Start the Airflow UI (standalone) and the MLflow UI; Ctrl-C stops both
	$(BIN)/python -m devtools.cli ui --airflow-port $(AIRFLOW_PORT) --mlflow-port $(MLFLOW_PORT)

serve: venv ## Serve the champion model with an MLflow model server
	$(BIN)/python -m devtools.cli serve --port $(SERVE_PORT)

request: venv ## Print a body for `make serve`'s /invocations: a real feature row of the champion (JSON)
	@$(BIN)/python -m devtools.cli request

bench: venv ## Benchmarks: polars vs DuckDB build, gates; inferred spec vs featuretools and RFM (bench/results/)
	$(BIN)/python bench/bench_features.py --events $(BENCH_EVENTS) $(BENCH_ARGS)
	$(BIN)/python bench/bench_retail.py $(BENCH_RETAIL_ARGS)
	$(BIN)/python bench/bench_shapes.py $(BENCH_SHAPES_ARGS)

bench-scale: venv ## Seed 10 M and 50 M events; extract, gate, build, one trial: wall and peak RSS per step
	nice -n 10 $(BIN)/python bench/bench_scale.py --customers $(SCALE_CUSTOMERS) $(SCALE_ARGS)

clean: ## Remove everything the embedded default wrote (.local/ and build/)
	rm -rf $(MLPLATFORM_HOME) build

# What a cluster install would use; override to render for your own cluster.
RENDER_ENV := PIPELINE_RUNTIME=kubernetes ARTIFACT_ROOT=s3://mlplatform/artifacts \
	MLFLOW_TRACKING_URI=http://mlplatform-mlflow:5000 OBJECT_STORE_SECRET_NAME=mlplatform-object-store

# The official Airflow chart the umbrella chart pins, put under helm/mlplatform/charts/ as `helm dependency
# build` would: from AIRFLOW_CHART_TGZ, else ../shared/charts/ beside the repository (no chart repository needed).
chart-deps: venv ## Put the pinned official Airflow chart under helm/mlplatform/charts/ (AIRFLOW_CHART_TGZ or ../shared/charts/)
	$(BIN)/python helm/render_chart.py --deps

render: airflow-db chart-deps ## Write every pod the DAGs launch and the rendered chart as YAML under build/render/
	rm -rf build/render
	env $(RENDER_ENV) $(BIN)/python -m devtools.render_cli --out build/render/pods
	$(BIN)/python helm/render_chart.py --out build/render

# One version source: the root pyproject's version tags every image and is the chart's appVersion.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)

images: ## Build the features, trainer, MLflow server and Airflow images (needs a Docker engine)
	docker build -f images/features/Dockerfile -t mlplatform/features:$(VERSION) .
	docker build -f images/trainer/Dockerfile -t mlplatform/trainer:$(VERSION) .
	docker build -f images/mlflow/Dockerfile -t mlplatform/mlflow:$(VERSION) .
	docker build -f images/airflow/Dockerfile -t mlplatform/airflow:$(VERSION) .

kind-test: ## Whole system on a local kind cluster: build, install the chart, train, check the champion
	kind/kind-test.sh

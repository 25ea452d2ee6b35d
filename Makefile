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
BENCH_EXTRACT_ARGS ?= --events 2000000
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

.PHONY: help venv seed airflow-db pools run summary test test-fast test-shapes test-scheduler test-ui test-containers ui serve request bench bench-scale chart-deps render docker-engine base-images images kind-test clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Bytecode compiled once here: with PYTHONDONTWRITEBYTECODE (CI sets it) or a read-only environment every
# process would compile Airflow, MLflow and scikit-learn from source on each import (airflow.sdk: 4.8 s -> 3.1 s)
$(VENV)/.synced: $(UV) uv.lock pyproject.toml contract/pyproject.toml images/features/pyproject.toml images/trainer/pyproject.toml images/mlflow/pyproject.toml
	$(UV) sync --frozen --all-packages --compile-bytecode
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
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not e2e and not scheduler and not ui and not containers and not shapes"

test-shapes: venv ## Every generated data shape (retail, feature table, multiclass, regression) through the DAG (minutes)
	$(BIN)/pytest -m shapes tests/e2e/test_own_data.py

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
	$(BIN)/python bench/bench_extract.py $(BENCH_EXTRACT_ARGS)
	$(BIN)/python bench/bench_demo.py

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

# Images. Every Dockerfile takes its bases as build arguments (defaults: the public python and uv images);
# `make base-images` builds local equivalents from Debian's and PyPI's packages (images/base/), and `make images`
# uses them when they exist (LOCAL_BASES=1 insists on them, LOCAL_BASES=0 ignores them).
# docker.io's client: a newer client without the buildx plugin cannot build with BuildKit (RUN --mount).
DOCKER ?= $(if $(wildcard /usr/bin/docker),/usr/bin/docker,docker)
export DOCKER_BUILDKIT := 1
PYTHON_BASE_IMAGE ?= mlplatform/python-base:3.11-bookworm
UV_BASE_IMAGE ?= mlplatform/uv:$(UV_VERSION)
LOCAL_BASES ?= auto
IMAGE_TAG ?= $(VERSION)
IMAGE_NAMES := features trainer mlflow airflow
# build-args for the local bases: when LOCAL_BASES=1, or (auto) when both exist on the engine.
base_args = $(if $(filter 1,$(LOCAL_BASES))$(and $(filter auto,$(LOCAL_BASES)),$(shell $(DOCKER) image inspect \
	$(PYTHON_BASE_IMAGE) $(UV_BASE_IMAGE) > /dev/null 2>&1 && echo yes)),\
	--build-arg PYTHON_IMAGE=$(PYTHON_BASE_IMAGE) --build-arg UV_IMAGE=$(UV_BASE_IMAGE))

docker-engine: ## Install (docker.io) and start a Docker engine if none answers (dockerd --bridge=none)
	DOCKER=$(DOCKER) images/base/docker-engine.sh

# The bootstrap environment's pip downloads uv's wheel (the project's own environment has no pip).
base-images: docker-engine $(UV) ## Build the Python and uv base images from Debian's and PyPI's packages (skips existing)
	DOCKER=$(DOCKER) PYTHON_BASE=$(PYTHON_BASE_IMAGE) UV_BASE=$(UV_BASE_IMAGE) UV_VERSION=$(UV_VERSION) \
		PYTHON=$(BOOTSTRAP)/bin/python images/base/build-bases.sh

images: ## Build the features, trainer, MLflow server and Airflow images (needs a Docker engine; sizes printed)
	@mkdir -p build; set -e; for name in $(IMAGE_NAMES); do \
		start=$$(date +%s); \
		$(DOCKER) build --network host $(base_args) -f images/$$name/Dockerfile -t mlplatform/$$name:$(IMAGE_TAG) . \
			> build/image-$$name.log 2>&1 || { tail -30 build/image-$$name.log; exit 1; }; \
		echo "mlplatform/$$name:$(IMAGE_TAG) built in $$(( $$(date +%s) - start )) s," \
			"$$($(DOCKER) image inspect -f '{{.Size}}' mlplatform/$$name:$(IMAGE_TAG) | awk '{printf "%.0f MB", $$1/1e6}')"; \
	done
	@# The Airflow image must parse its DAG folder with no import error, as the scheduler's DAG processor would.
	$(DOCKER) run --rm --network host --read-only --tmpfs /tmp -e AIRFLOW_HOME=/tmp/airflow \
		mlplatform/airflow:$(IMAGE_TAG) python -c "$$AIRFLOW_IMAGE_CHECK"

# It must also import the auth manager and executor the chart configures (helm/mlplatform/values.yaml).
export AIRFLOW_IMAGE_CHECK := from airflow.dag_processing.dagbag import DagBag; \
	from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager; \
	from airflow.providers.cncf.kubernetes.executors.kubernetes_executor import KubernetesExecutor; \
	bag = DagBag('/opt/airflow/dags'); \
	assert bag.dags and not bag.import_errors, bag.import_errors or 'no DAGs'; \
	print(f'mlplatform/airflow: {len(bag.dags)} DAGs parse with no import error: {sorted(bag.dags)}')

# The container tier: a Docker engine (installed and started when missing), the bases and the images (Docker's
# layer cache makes a rebuild of unchanged code take seconds), then the training DAG with every step a container.
test-containers: venv base-images ## Container tier: images built, the training DAG run as containers (minutes)
	$(MAKE) --no-print-directory images
	$(BIN)/pytest -m containers tests/containers

kind-test: ## Whole system on a local kind cluster: build, install the chart, train, check the champion
	kind/kind-test.sh

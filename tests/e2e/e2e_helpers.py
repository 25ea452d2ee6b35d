"""End-to-end helpers: a seeded embedded platform and DAG runs through `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import BIN, airflow_env


def make_platform(home: Path, *, mlflow_url: str, airflow_home: Path, model_name: str,
                  seed_args: tuple[str, ...] = ("--customers", "3000", "--events-per-customer", "30", "--seed", "7"),
                  ) -> dict[str, str]:
    """Environment of one embedded platform (its own warehouse, artifacts and registered model)."""
    env = {
        **os.environ,
        **airflow_env(airflow_home),
        "MLPLATFORM_HOME": str(home),
        "PIPELINE_RUNTIME": "local",
        "ARTIFACT_ROOT": f"file://{home}/artifacts",
        "WAREHOUSE_URI": f"sqlite:///{home}/warehouse.db",
        "MLFLOW_TRACKING_URI": mlflow_url,
        "REGISTERED_MODEL_NAME": model_name,
        "MLFLOW_EXPERIMENT_NAME": model_name,
    }
    subprocess.run([sys.executable, "-m", "features", "seed", *seed_args], env=env, check=True,
                   capture_output=True, text=True)
    return env


def run_dag(env: dict, dag_id: str, conf: dict | None = None, logical_date: str | None = None) -> tuple[str, str]:
    """Run a DAG once in-process; return its final state (from the metadata DB) and the log."""
    command = [str(BIN / "airflow"), "dags", "test", dag_id]
    if logical_date:
        command.append(logical_date)
    result = subprocess.run([*command, "-c", json.dumps(conf or {})], env=env, capture_output=True, text=True,
                            timeout=1200)
    runs = subprocess.run([str(BIN / "airflow"), "dags", "list-runs", dag_id, "-o", "json"], env=env,
                          capture_output=True, text=True, check=True)
    # Airflow may log warnings before the JSON document: take the JSON line.
    listing = next(line for line in reversed(runs.stdout.splitlines()) if line.startswith("["))
    latest = max(json.loads(listing), key=lambda run: run["start_date"] or "")
    return latest["state"], result.stdout + result.stderr

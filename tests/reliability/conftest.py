"""The reliability suite's frame: a hostile but fair user's inputs and faults against real parts.

Real parts only: a SQLite warehouse written by the data generator (PostgreSQL through the shared
``postgres_uri`` fixture where a case needs it), a real MLflow registry (SQLite store, one per module), the
artifact store on the local filesystem. Each case asserts the user's message, the step that failed, and that
the champion, the registry and the warehouse are unchanged: ``reliability_frame.registry_state`` and
``warehouse_state`` capture them before and after. The tally of the cases is in README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before xgboost loads: see trainer.cli.main

import pytest
from reliability_frame import Platform

MODEL_ENV = {
    "PIPELINE_DAG_ID": "ml_model_training",
    "PIPELINE_TASK_ID": "train_model",
    "CODE_VERSION": "reliability-1",
    "MLFLOW_EXPERIMENT_NAME": "reliability",
    "PIPELINE_RUNTIME": "local",
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Platform:
    """A real MLflow registry (SQLite) and artifact store for the module; the steps' env points at them."""
    root = tmp_path_factory.mktemp("platform")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # nothing may land in the working directory of the test run
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mp.setenv("MLFLOW_ARTIFACT_LOCATION", str(root / "mlflow-artifacts"))
        for name, value in MODEL_ENV.items():
            mp.setenv(name, value)
        yield Platform(root, tracking_uri, (root / "artifacts").as_uri())


@pytest.fixture(scope="session")
def synth_warehouse(tmp_path_factory) -> str:
    """A small generated customer-activity warehouse (SQLite): customers, events, churn_labels."""
    from features import synth

    uri = f"sqlite:///{tmp_path_factory.mktemp('warehouse') / 'warehouse.db'}"
    synth.generate(synth.SynthConfig(customers=600, events_per_customer=20, days=120, snapshots=4, seed=5), uri)
    return uri

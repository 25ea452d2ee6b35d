"""End to end on the embedded default: the real DAG through `airflow dags test`, every step a local process
running its rendered pod, a real MLflow tracking server, a real SQL warehouse."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from e2e_helpers import make_platform, run_dag

pytestmark = pytest.mark.e2e

MODEL_NAME = "e2e-churn"
DAG_ID = "ml_model_training"
FAST = {"n_trials": 3, "max_boost_rounds": 400}


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mlflow_server, airflow_home):
    return make_platform(tmp_path_factory.mktemp("platform"), mlflow_url=mlflow_server, airflow_home=airflow_home,
                         model_name=MODEL_NAME)


def run_training(env: dict, conf: dict) -> tuple[str, str]:
    return run_dag(env, DAG_ID, conf)


def client(env):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])


def champion_version(env) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client(env).get_model_version_by_alias(MODEL_NAME, "champion").version
    except MlflowException:
        return None


def versions(env) -> list[str]:
    return sorted(v.version for v in client(env).search_model_versions(f"name='{MODEL_NAME}'"))


def latest_summary(env) -> dict:
    path = Path(env["MLPLATFORM_HOME"]) / "artifacts" / "runs" / DAG_ID / "latest-summary.json"
    return json.loads(path.read_text())


def oracle_auc(env) -> float:
    from devtools.cli import oracle_auc as generator_oracle_auc

    return generator_oracle_auc(env["WAREHOUSE_URI"])


@pytest.fixture(scope="module")
def first_run(platform):
    state, log = run_training(platform, FAST)
    assert state == "success", log[-6000:]
    return latest_summary(platform)


def test_first_run_promotes_a_champion(platform, first_run):
    assert first_run["decision"]["action"] == "promote"
    assert "first model" in first_run["decision"]["reason"]
    version = first_run["model"]["version"]
    assert champion_version(platform) == str(version)
    assert first_run["gates"]["raw"]["success"] and first_run["gates"]["features"]["success"]
    assert first_run["rows"]["extracted"]["events"] > 10_000


def test_champion_is_close_to_the_oracle(platform, first_run):
    test_auc = first_run["model"]["metrics"]["test_auc"]
    assert test_auc >= 0.95 * oracle_auc(platform), (test_auc, oracle_auc(platform))


def test_registered_version_carries_lineage_and_artifacts(platform, first_run):
    mlflow_client = client(platform)
    version = mlflow_client.get_model_version(MODEL_NAME, str(first_run["model"]["version"]))
    assert version.tags["snapshot_hash"] == first_run["snapshot"]["hash"]
    assert version.tags["pipeline_run_key"] == f"{DAG_ID}/{first_run['run_id']}"
    run = mlflow_client.get_run(version.run_id)
    artifacts = json.dumps([a.path for a in mlflow_client.list_artifacts(run.info.run_id)]) + json.dumps(
        [a.path for d in mlflow_client.list_artifacts(run.info.run_id) if d.is_dir
         for a in mlflow_client.list_artifacts(run.info.run_id, d.path)]
    )
    for expected in ("roc", "pr", "importance", "confusion", "validation"):
        assert expected in artifacts.lower(), (expected, artifacts)
    for secret in (platform["WAREHOUSE_URI"],):
        assert secret not in json.dumps(run.data.params)


def test_deploy_step_wrote_the_serving_record(platform, first_run):
    record = json.loads(
        (Path(platform["MLPLATFORM_HOME"]) / "artifacts" / "deployments" / MODEL_NAME / "champion.json").read_text()
    )
    assert record["version"] == str(first_run["model"]["version"])
    assert record["model_uri"] == f"models:/{MODEL_NAME}/{first_run['model']['version']}"


def test_weaker_challenger_is_rejected_and_champion_unchanged(platform, first_run):
    champion_before = champion_version(platform)
    state, log = run_training(platform, {"n_trials": 1, "max_boost_rounds": 2})
    assert state == "success", log[-6000:]
    summary = latest_summary(platform)
    assert summary["decision"]["action"] == "reject", summary["decision"]
    assert champion_version(platform) == champion_before
    assert summary["model"]["version"] != champion_before, "the weaker model is registered, not promoted"
    # Same warehouse, same feature code: the content-addressed snapshot is reused, not rebuilt.
    assert summary["snapshot"]["reused"] is True
    assert summary["snapshot"]["hash"] == first_run["snapshot"]["hash"]
    audit = Path(platform["MLPLATFORM_HOME"]) / "artifacts" / "registry" / MODEL_NAME / "alias-moves" / DAG_ID
    rejected = [json.loads(p.read_text()) for p in audit.glob("*/reject.json")]
    assert any(r["from_version"] == champion_before for r in rejected)


def test_corrupted_warehouse_fails_the_gate_and_registers_nothing(platform, first_run, tmp_path):
    source = Path(platform["WAREHOUSE_URI"].removeprefix("sqlite:///"))
    corrupted = tmp_path / "corrupted.db"
    shutil.copy(source, corrupted)
    with sqlite3.connect(corrupted) as connection:
        connection.execute("UPDATE events SET amount = -100.0 WHERE rowid % 97 = 0")
    champion_before, versions_before = champion_version(platform), versions(platform)
    state, log = run_training({**platform, "WAREHOUSE_URI": f"sqlite:///{corrupted}"}, FAST)
    assert state == "failed"
    assert "amount" in log and "expect_column_values_to_be_between" in log
    assert versions(platform) == versions_before, "a failed gate must register nothing"
    assert champion_version(platform) == champion_before


def test_rerunning_the_final_fit_registers_no_duplicate(platform, first_run):
    """Clearing and rerunning a step of a finished run gives the same result and no second model version."""
    import subprocess

    from mlcontract import layout
    from mlcontract.manifests import TrainManifest
    from support import BIN

    train_dir = layout.step_dir(platform["ARTIFACT_ROOT"], DAG_ID, first_run["run_id"], "train_model")
    before = TrainManifest.read(train_dir)
    versions_before = versions(platform)
    result = subprocess.run(
        [str(BIN / "airflow"), "tasks", "test", DAG_ID, "train_model", first_run["run_id"]],
        env=platform, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    after = TrainManifest.read(train_dir)
    assert versions(platform) == versions_before
    assert after.model_version == before.model_version
    assert after.metrics == before.metrics

"""End to end: model_monitoring after real training and batch-prediction runs (`airflow dags test`, local pods,
a real MLflow server, a SQLite warehouse).

Drift: the warehouse is regenerated with the generator's drift knob (it changes only events after the last
label snapshot), a date after that snapshot is scored, and monitoring detects the drift and records an
event on the drift Asset. Degraded champion: a weak model is forced to champion; monitoring on a labelled
date sees it is worse than the previous champion on the same entities and rolls the alias back (audited).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import make_platform, run_dag
from support import BIN

pytestmark = pytest.mark.e2e

MODEL_NAME = "e2e-monitoring"
SEED_ARGS = ("--customers", "2000", "--events-per-customer", "30", "--seed", "5")
LABELLED_DATE = "2026-09-01"  # the generator's last label snapshot (end 2026-10-01, 30-day label horizon)
DRIFT_DATE = "2026-10-01"  # every event of its 30-day window comes after that snapshot: drifted
DAG_ID = "model_monitoring"
# Grows with the calendar by construction (the generated history starts on a fixed day), so it shifts between
# any two dates: left out of the drift check here, as a user would for such a feature.
MONITOR_CONF = {"drift_ignore_features": "days_since_first_event", "rollback_margin": 0.002}


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mlflow_server, airflow_home):
    env = make_platform(tmp_path_factory.mktemp("monitoring-platform"), mlflow_url=mlflow_server,
                        airflow_home=airflow_home, model_name=MODEL_NAME, seed_args=SEED_ARGS)
    state, log = run_dag(env, "ml_model_training", {"n_trials": 2, "max_boost_rounds": 300})
    assert state == "success", log[-6000:]
    return env


def artifacts(env) -> Path:
    return Path(env["MLPLATFORM_HOME"]) / "artifacts"


def alias(env, name: str) -> str | None:
    from mlplatform import registry

    return registry.alias_version(env["MLFLOW_TRACKING_URI"], MODEL_NAME, name)


def score_and_monitor(env, score_date: str) -> tuple[dict, str]:
    state, log = run_dag(env, "batch_prediction", {"score_date": score_date})
    assert state == "success", log[-6000:]
    state, log = run_dag(env, DAG_ID, {**MONITOR_CONF, "score_date": score_date})
    assert state == "success", log[-6000:]
    run_id = latest_run_id(env)
    from mlcontract import layout
    from mlcontract.manifests import MonitorManifest

    report = MonitorManifest.read(layout.step_dir(env["ARTIFACT_ROOT"], DAG_ID, run_id, "monitor"))
    return report.model_dump(mode="json"), run_id


def latest_run_id(env) -> str:
    runs = subprocess.run([str(BIN / "airflow"), "dags", "list-runs", DAG_ID, "-o", "json"], env=env,
                          capture_output=True, text=True, check=True)
    return max(json_output(runs.stdout), key=lambda run: run["start_date"] or "")["run_id"]


def task_states(env, run_id: str) -> dict[str, str]:
    result = subprocess.run([str(BIN / "airflow"), "tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json"],
                            env=env, capture_output=True, text=True, check=True)
    return {row["task_id"]: row["state"] for row in json_output(result.stdout)}


ASSET_EVENTS = """
import json
from sqlalchemy import select
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
with create_session() as session:
    rows = session.execute(
        select(AssetModel.uri, AssetEvent.source_dag_id, AssetEvent.source_task_id, AssetEvent.source_run_id)
        .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
    ).all()
print(json.dumps([list(row) for row in rows]))
"""


def asset_events(env) -> list[list[str]]:
    """Asset events from the Airflow metadata DB, read in a process with the platform's AIRFLOW_HOME."""
    result = subprocess.run([sys.executable, "-c", ASSET_EVENTS], env=env, capture_output=True, text=True,
                            check=True)
    return json_output(result.stdout)


def json_output(stdout: str):
    """The JSON a CLI printed last (Airflow may log warnings to stdout before it)."""
    return json.loads(stdout.strip().splitlines()[-1])


def test_degraded_champion_is_rolled_back_to_the_previous_one(platform):
    from mlplatform import registry

    good = alias(platform, "champion")
    state, log = run_dag(platform, "ml_model_training", {"n_trials": 1, "max_boost_rounds": 2})
    assert state == "success", log[-6000:]
    assert alias(platform, "champion") == good, "the weak model is rejected by the training DAG"
    weak = alias(platform, "challenger")
    assert weak != good
    # Simulate a bad promotion: the weak model becomes champion, the good one previous-champion.
    registry.promote(platform["MLFLOW_TRACKING_URI"], f"file://{artifacts(platform)}", MODEL_NAME, weak,
                     reason="e2e: simulated bad promotion", dag_id="e2e", run_id="bad-promotion", metrics={})
    assert (alias(platform, "champion"), alias(platform, "previous-champion")) == (weak, good)

    report, run_id = score_and_monitor(platform, LABELLED_DATE)
    assert report["drift_evaluated"] is True and report["drift_detected"] is False, report["psi"]
    assert task_states(platform, run_id)["emit_retrain_signal"] == "skipped"
    realised = report["realised"]
    assert realised["champion"]["version"] == weak and realised["previous"]["version"] == good
    assert realised["previous"]["rows"] == realised["champion"]["rows"] > 1000
    assert realised["previous"]["auc"] > realised["champion"]["auc"], realised
    assert report["rollback"]["action"] == "rollback", report["rollback"]["reason"]
    states = task_states(platform, run_id)
    assert states["rollback_if_degraded"] == "success" and states["decide_ab_test"] == "skipped"

    assert alias(platform, "champion") == good
    assert alias(platform, "previous-champion") == weak
    safe_run = run_id.replace("/", "_")
    audit = artifacts(platform) / "registry" / MODEL_NAME / "alias-moves" / DAG_ID / safe_run / "rollback.json"
    move = json.loads(audit.read_text())
    assert (move["action"], move["from_version"], move["to_version"]) == ("rollback", weak, good)
    deployed = json.loads((artifacts(platform) / "deployments" / MODEL_NAME / "champion.json").read_text())
    assert (deployed["version"], deployed["mode"]) == (good, "full")


def test_drift_is_detected_and_the_retrain_asset_gets_an_event(platform):
    """Runs after the rollback test: the drifted warehouse would change that test's training snapshot."""
    seed = subprocess.run([sys.executable, "-m", "features", "seed", *SEED_ARGS, "--drift", "0.8"], env=platform,
                          capture_output=True, text=True, check=False)
    assert seed.returncode == 0, seed.stderr[-3000:]
    report, run_id = score_and_monitor(platform, DRIFT_DATE)
    assert report["drift_evaluated"] is True and report["drift_detected"] is True, report["psi"]
    assert report["breached_features"], report["psi"]
    assert max(report["psi"].values()) > 0.2
    states = task_states(platform, run_id)
    assert states["emit_retrain_signal"] == "success"
    assert states["rollback_if_degraded"] == "skipped"  # no labels for this date yet
    assert states["decide_ab_test"] == "skipped"
    drift_events = [e for e in asset_events(platform) if e[0] == f"mlplatform://drift/{MODEL_NAME}"]
    # exactly one: this run's; the earlier run without drift skipped the task and emitted nothing
    assert drift_events == [[f"mlplatform://drift/{MODEL_NAME}", DAG_ID, "emit_retrain_signal", run_id]]

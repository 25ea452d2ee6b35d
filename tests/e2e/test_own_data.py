"""End to end on the user's own data: each generated warehouse shape (other table and column names, labels at
one cutoff, a ready-made feature table, a multiclass and a regression target) trains through the real
`ml_model_training` DAG with nothing in the Params form but table and column names (and the task), and its
champion reaches 0.97x the generator's oracle on the test rows. The feature-table champion then scores that
table through `batch_prediction`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import make_platform, run_dag
from mlcontract.manifests import SeedManifest

# Four whole DAG runs on data of its own: a tier of its own (`make test-shapes`, run by .ci/run), so that
# `make test` stays well under 15 minutes on two cores.
pytestmark = [pytest.mark.e2e, pytest.mark.shapes]

DAG_ID = "ml_model_training"
# Each shape at the smallest size whose test split is large enough for a stable metric (the generator's
# default events per entity and seed, as `bench/bench_shapes.py` measures them): a feature table has no events,
# so it affords the most rows; four monthly cutoffs give multiclass a time split with every entity in its test.
SIZES = {"retail": 5000, "feature-table": 20000, "multiclass": 1500, "regression": 8000}
FAST = {"n_trials": 1, "max_boost_rounds": 400}  # the first trial is the defaults
QUALITY = 0.97  # of the generator's oracle metric
# What a user fills in the form for each shape: where the data is and what its columns are called.
FORMS = {
    "retail": {"events_table": "transactions", "labels_table": "churn_at_cutoff", "entities_table": "",
               "entity_key": "client_ref", "timestamp_column": "purchased_at", "snapshot_column": "cutoff_ts",
               "label_column": "churned"},
    "feature-table": {"source_kind": "feature_table", "features_table": "customer_features",
                      "entity_key": "account_id", "snapshot_column": "", "label_column": "will_upgrade"},
    "multiclass": {"events_table": "orders", "labels_table": "next_category", "entities_table": "",
                   "entity_key": "shopper_id", "timestamp_column": "ordered_at", "snapshot_column": "as_of",
                   "label_column": "next_category", "task": "multiclass"},
    "regression": {"events_table": "payments", "labels_table": "spend_next_90d", "entities_table": "",
                   "entity_key": "member_no", "timestamp_column": "paid_at", "snapshot_column": "as_of",
                   "label_column": "spend_next_90d", "task": "regression"},
}
# The metric each task is held to against its oracle (higher is better for all three).
ORACLE_METRIC = {"binary": "auc", "multiclass": "accuracy", "regression": "r2"}
SCORE_DATE = "2026-09-01"
PREDICTIONS_TABLE = "upgrade_predictions"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mlflow_server, airflow_home):
    """One warehouse holding every shape's tables (their names differ); the reports hold each oracle."""
    home = tmp_path_factory.mktemp("own-data")
    first, *others = FORMS
    env = make_platform(home, mlflow_url=mlflow_server, airflow_home=airflow_home, model_name="own-data",
                        seed_args=seed_args(first, home))
    for shape in others:
        subprocess.run([sys.executable, "-m", "features", "seed", *seed_args(shape, home)], env=env, check=True,
                       capture_output=True, text=True)
    return env, {shape: SeedManifest.read(seed_report(shape, home)).report for shape in FORMS}


def seed_report(shape: str, home: Path) -> str:
    return f"file://{home}/seed-{shape}"


def seed_args(shape: str, home: Path) -> tuple[str, ...]:
    return ("--shape", shape, "--customers", str(SIZES[shape]), "--seed", "42", "--out", seed_report(shape, home))


def model_env(env: dict, shape: str) -> dict:
    """Each shape is its own registered model: its champion is compared with its own kind only."""
    name = f"own-{shape}"
    return {**env, "REGISTERED_MODEL_NAME": name, "MLFLOW_EXPERIMENT_NAME": name}


@pytest.fixture(scope="module")
def trained(platform):
    """Each shape's run summary, trained once (lazily: a test asks for the shapes it needs)."""
    env, _ = platform
    summaries: dict[str, dict] = {}

    def train(shape: str) -> dict:
        if shape not in summaries:
            shape_env = model_env(env, shape)
            state, log = run_dag(shape_env, DAG_ID, {**FAST, **FORMS[shape]})
            assert state == "success", log[-6000:]
            path = Path(env["MLPLATFORM_HOME"]) / "artifacts" / "runs" / DAG_ID / "latest-summary.json"
            summaries[shape] = json.loads(path.read_text())
        return summaries[shape]

    return train


@pytest.mark.parametrize("shape", list(FORMS))
def test_each_shape_trains_from_names_alone_close_to_its_oracle(platform, trained, shape):
    _, reports = platform
    report, summary = reports[shape], trained(shape)
    assert summary["decision"]["action"] == "promote", summary["decision"]
    assert summary["snapshot"]["task"] == report["task"]
    metric = ORACLE_METRIC[report["task"]]
    oracle = report["oracle_test"][metric]
    reached = summary["model"]["metrics"][f"test_{metric}"]
    assert reached >= QUALITY * oracle, f"{shape}: test {metric} {reached:.4f} < {QUALITY} x oracle {oracle:.4f}"


def test_labels_at_one_cutoff_are_split_by_entity(trained):
    summary = trained("retail")
    assert summary["snapshot"]["split_method"] == "entity"
    assert summary["gates"]["raw"]["success"] and summary["gates"]["features"]["success"]


def test_a_feature_table_champion_scores_the_table(platform, trained):
    env, reports = platform
    trained("feature-table")
    shape_env = model_env(env, "feature-table")
    state, log = run_dag(shape_env, "batch_prediction", {
        "score_date": SCORE_DATE, "features_table": "customer_features", "entity_key": "account_id",
        "predictions_table": PREDICTIONS_TABLE,
    })
    assert state == "success", log[-6000:]
    accounts = reports["feature-table"]["rows"]["customer_features"]
    with sqlite3.connect(env["WAREHOUSE_URI"].removeprefix("sqlite:///")) as connection:
        rows = connection.execute(f"SELECT entity_id, score, model_name FROM {PREDICTIONS_TABLE}").fetchall()
    assert len(rows) == len({r[0] for r in rows}) == accounts, "one prediction per account"
    assert {r[2] for r in rows} == {"own-feature-table"} and all(0.0 <= r[1] <= 1.0 for r in rows)

"""End to end: the real batch_prediction DAG after a real training run (`airflow dags test`, local pods, a real
MLflow server, a SQLite warehouse): the champion scores a date, a rerun replaces instead of duplicating, and
a broken scoring run fails at the output gate without touching the published rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from e2e_helpers import make_platform, run_dag

pytestmark = pytest.mark.e2e

MODEL_NAME = "e2e-scoring"
SCORE_DATE = "2026-09-01"  # the generator's last snapshot date (end 2026-10-01, 30-day label horizon)
TABLE = "churn_predictions"


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mlflow_server, airflow_home):
    env = make_platform(
        tmp_path_factory.mktemp("scoring-platform"), mlflow_url=mlflow_server, airflow_home=airflow_home,
        model_name=MODEL_NAME, seed_args=("--customers", "2000", "--events-per-customer", "30", "--seed", "11"),
    )
    state, log = run_dag(env, "ml_model_training", {"n_trials": 2, "max_boost_rounds": 300})
    assert state == "success", log[-6000:]
    return env


def champion_version(env) -> str:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(
        MODEL_NAME, "champion"
    ).version


def warehouse(env) -> Path:
    return Path(env["WAREHOUSE_URI"].removeprefix("sqlite:///"))


def table_rows(env) -> list[tuple]:
    with sqlite3.connect(warehouse(env)) as connection:
        return connection.execute(
            f"SELECT entity_id, score_date, score, model_name, model_version, alias, dag_run_id FROM {TABLE}"
        ).fetchall()


def published(env) -> dict:
    from mlcontract import layout
    from mlcontract.manifests import PredictionsManifest

    return PredictionsManifest.read(layout.predictions_dir(env["ARTIFACT_ROOT"], MODEL_NAME, SCORE_DATE)).model_dump()


@pytest.fixture(scope="module")
def first_scoring(platform):
    state, log = run_dag(platform, "batch_prediction", {"score_date": SCORE_DATE})
    assert state == "success", log[-6000:]
    return table_rows(platform)


def test_champion_scores_every_entity_once(platform, first_scoring):
    manifest = published(platform)
    rows = first_scoring
    assert len(rows) == manifest["rows"]["predictions"] > 1000
    assert len({r[0] for r in rows}) == len(rows), "one row per entity"
    version = champion_version(platform)
    assert {(r[1], r[3], r[4], r[5]) for r in rows} == {(SCORE_DATE, MODEL_NAME, version, "champion")}
    assert all(0.0 <= r[2] <= 1.0 for r in rows)
    assert manifest["model_version"] == version
    root = Path(platform["MLPLATFORM_HOME"]) / "artifacts" / "predictions" / MODEL_NAME / SCORE_DATE
    assert (root / "predictions.parquet").exists() and (root / "features.parquet").exists()


def test_rerun_replaces_the_date_instead_of_duplicating(platform, first_scoring):
    state, log = run_dag(platform, "batch_prediction", {"score_date": SCORE_DATE})
    assert state == "success", log[-6000:]
    rows = table_rows(platform)
    assert len(rows) == len(first_scoring)
    assert len({r[6] for r in rows}) == 1 and rows[0][6] != first_scoring[0][6], "the rerun's rows replaced the first"
    assert sorted((r[0], r[2]) for r in rows) == sorted((r[0], r[2]) for r in first_scoring), "deterministic scores"


def test_bad_predictions_fail_the_gate_and_publish_nothing(platform, first_scoring):
    before = table_rows(platform)
    with sqlite3.connect(warehouse(platform)) as connection:  # a dimension table with a duplicated key
        connection.execute("DROP TABLE IF EXISTS customers_with_duplicate")
        connection.execute("CREATE TABLE customers_with_duplicate AS SELECT * FROM customers")
        connection.execute(
            "INSERT INTO customers_with_duplicate SELECT * FROM customers ORDER BY customer_id LIMIT 1"
        )
    state, log = run_dag(
        platform, "batch_prediction", {"score_date": SCORE_DATE, "entities_table": "customers_with_duplicate"}
    )
    assert state == "failed"
    assert "validate-predictions gate failed" in log and "expect_column_values_to_be_unique" in log, log[-4000:]
    assert table_rows(platform) == before, "a failed gate must leave the published rows as they were"

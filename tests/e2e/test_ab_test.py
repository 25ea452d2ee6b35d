"""End to end: an A/B test from start to decision.

A better challenger trained with `deploy_mode=ab_test` is not made champion: it serves a share of the entities
(batch prediction routes each entity by a stable hash and records its arm); once labels arrive, monitoring
compares the arms on the same date and the test ends in promotion, recorded like every alias move.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_helpers import make_platform, run_dag

pytestmark = pytest.mark.e2e

MODEL_NAME = "e2e-ab"
LABELLED_DATE = "2026-09-01"  # the generator's last label snapshot: outcomes are known for this date


def alias(env, name: str) -> str | None:
    from mlplatform import registry

    return registry.alias_version(env["MLFLOW_TRACKING_URI"], MODEL_NAME, name)


def deployment(env) -> dict:
    return json.loads((Path(env["MLPLATFORM_HOME"]) / "artifacts" / "deployments" / MODEL_NAME / "champion.json")
                      .read_text())


def test_ab_test_serves_a_share_and_promotes_the_better_arm(tmp_path_factory, mlflow_server, airflow_home):
    env = make_platform(tmp_path_factory.mktemp("ab-platform"), mlflow_url=mlflow_server, airflow_home=airflow_home,
                        model_name=MODEL_NAME,
                        seed_args=("--customers", "2500", "--events-per-customer", "30", "--seed", "9"))
    # A weak first champion (a handful of boosting rounds), then a proper model as the challenger.
    state, log = run_dag(env, "ml_model_training", {"n_trials": 1, "max_boost_rounds": 3, "promotion_threshold": 0.5})
    assert state == "success", log[-6000:]
    weak = alias(env, "champion")
    state, log = run_dag(env, "ml_model_training", {"n_trials": 2, "max_boost_rounds": 300, "deploy_mode": "ab_test",
                                                    "challenger_share": 0.5})
    assert state == "success", log[-6000:]
    record = deployment(env)
    assert alias(env, "champion") == weak, "an A/B start must not move the champion"
    assert record["mode"] == "ab_test" and record["version"] == weak and record["challenger_share"] == 0.5
    challenger = record["challenger_version"]
    assert challenger != weak

    state, log = run_dag(env, "batch_prediction", {"score_date": LABELLED_DATE})
    assert state == "success", log[-6000:]
    import polars as pl

    predictions = pl.read_parquet(Path(env["MLPLATFORM_HOME"]) / "artifacts" / "predictions" / MODEL_NAME
                                  / LABELLED_DATE / "predictions.parquet")
    arms = dict(predictions.group_by("alias").agg(pl.len(), pl.col("model_version").first()).select(
        "alias", "model_version").iter_rows())
    assert arms == {"champion": weak, "challenger": challenger}
    share = (predictions["alias"] == "challenger").mean()
    assert 0.4 < share < 0.6, share

    state, log = run_dag(env, "model_monitoring", {"score_date": LABELLED_DATE, "min_rows": 200})
    assert state == "success", log[-6000:]
    assert alias(env, "champion") == challenger, "the better arm must be promoted"
    assert alias(env, "previous-champion") == weak
    record = deployment(env)
    assert record["mode"] == "full" and record["version"] == challenger
    audit = Path(env["MLPLATFORM_HOME"]) / "artifacts" / "registry" / MODEL_NAME / "alias-moves" / "model_monitoring"
    moves = [json.loads(p.read_text()) for p in audit.glob("*/promote.json")]
    assert len(moves) == 1 and moves[0]["to_version"] == challenger and "A/B" in moves[0]["reason"]

"""Task types through the trainer: multiclass and regression models from trial to monitoring.

Each task gets a hand-made snapshot with a known signal (a BuildManifest and parquet splits, as
test_trainer.make_snapshot makes binary ones) and a real MLflow registry on SQLite. A model is trialled,
trained, evaluated against the naive baseline and a champion, promoted by the rules of its task, scores a
day (gated like batch prediction does) and is monitored against realised labels.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before xgboost loads: see trainer.cli.main

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlcontract import layout, storage
from mlcontract.manifests import (
    BuildManifest,
    EvaluateManifest,
    ExtractManifest,
    LabelsManifest,
    MonitorManifest,
    ScoreManifest,
    ScoringBuildManifest,
    ScoringExtractManifest,
    SnapshotManifest,
    TrainManifest,
    TrialManifest,
)
from mlcontract.names import LABELS_FILE, MULTICLASS, PREDICTION_COLUMNS, REGRESSION
from mlcontract.source import LabelSource
from test_trainer import mlflow_env  # noqa: F401 - the module's MLflow registry fixture
from trainer.cli import main

FEATURES = [f"x{i}" for i in range(6)]
FAST = {"learning_rate": 0.15, "max_depth": 4, "n_estimators": 300, "early_stopping_rounds": 20}
WEAK = {"max_depth": 1, "n_estimators": 1, "learning_rate": 0.1}
CLASSES = ["bronze", "silver", "gold"]
DAY = date(2024, 2, 4)  # the test split's snapshot date


def _frame(rng: np.random.Generator, task: str, n: int, dates: list[datetime]) -> pl.DataFrame:
    x = rng.normal(size=(n, len(FEATURES)))
    x[rng.random(n) < 0.05, 5] = np.nan  # missing values pass through as missing
    if task == MULTICLASS:
        logits = np.stack([2.0 * x[:, 0], 2.0 * x[:, 1] - 0.5, 1.5 * x[:, 2] * x[:, 3]], axis=1)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        label = pl.Series("label", (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1), dtype=pl.Int8)
    else:
        label = pl.Series("label", 2.0 * x[:, 0] - x[:, 1] + x[:, 2] * x[:, 3] + rng.normal(0, 0.5, n))
    return pl.DataFrame(
        {
            "entity_id": [f"c{i:05d}" for i in range(n)],
            "snapshot_ts": [dates[i % len(dates)] for i in range(n)],
            "label": label,
            **{name: x[:, i] for i, name in enumerate(FEATURES)},
        }
    ).with_columns(pl.col("x5").fill_nan(None))


def make_task_snapshot(root: Path, task: str, seed: int = 0, rows: int = 1500) -> str:
    """A build step dir + content-addressed snapshot of ``task`` (multiclass: ``CLASSES``)."""
    rng = np.random.default_rng(seed)
    day = datetime(2024, 1, 7)
    dates = {"train": [day + timedelta(weeks=k) for k in range(3)], "valid": [day + timedelta(weeks=3)],
             "test": [day + timedelta(weeks=4)]}
    sizes = {"train": rows * 2, "valid": rows, "test": rows}
    snapshot_hash = f"{task}-{seed}"
    snapshot_uri = (root / "features" / snapshot_hash).as_uri()
    for split, n in sizes.items():
        path = storage.local_path(storage.join_uri(snapshot_uri, f"{split}.parquet"))
        path.parent.mkdir(parents=True, exist_ok=True)
        _frame(rng, task, n, dates[split]).write_parquet(path)
    contents = {
        "snapshot_hash": snapshot_hash, "feature_columns": FEATURES, "rows": sizes, "label_rate": {},
        "splits": {k: [str(d.date()) for d in v] for k, v in dates.items()}, "feature_config": {}, "task": task,
        "classes": CLASSES if task == MULTICLASS else None, "columns": {"label": "tier"},
    }
    SnapshotManifest(**contents, categories={}, code_version="test").write(snapshot_uri)
    extract_dir = str(root / "runs" / "extract")
    ExtractManifest(rows={}, parts=0, content_hash="abc", snapshots=[], source={"labels_table": "tiers"}).write(
        extract_dir
    )
    build_dir = str(root / "runs" / f"build-{snapshot_hash}")
    BuildManifest(outputs={"snapshot": snapshot_uri}, snapshot_uri=snapshot_uri, reused=False, extract=extract_dir,
                  extract_content_hash="abc", **contents).write(build_dir)
    return build_dir


def split_frame(build_dir: str, split: str) -> pl.DataFrame:
    uri = storage.join_uri(BuildManifest.read(build_dir).snapshot_uri, f"{split}.parquet")
    return pl.read_parquet(storage.local_path(uri))


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def train(build_dir: str, out: Path, name: str, run_id: str, mp, params: dict = FAST) -> TrainManifest:
    mp.setenv("PIPELINE_RUN_ID", run_id)
    args = ["train", "--features", build_dir, "--params", json.dumps(params), "--seed", "3", "--model-name", name,
            "--out", str(out)]
    assert main(args) == 0
    return TrainManifest.read(str(out))


def evaluate(build_dir: str, out: Path, name: str, version: str) -> EvaluateManifest:
    args = ["evaluate", "--features", build_dir, "--model-name", name, "--challenger-version", version,
            "--out", str(out)]
    assert main(args) == 0
    return EvaluateManifest.read(str(out))


def score_day(
    build_dir: str, tmp_path: Path, name: str, frame: pl.DataFrame | None = None, *extra: str
) -> ScoreManifest:
    """The build-scoring output for the test split (or ``frame``), scored by @champion (``extra``: options
    of `trainer score`)."""
    features = (split_frame(build_dir, "test") if frame is None else frame).drop("label")
    directory = tmp_path / "build_scoring"
    directory.mkdir(parents=True, exist_ok=True)
    features.write_parquet(directory / "features.parquet")
    ScoringBuildManifest(
        outputs={"features": str(directory / "features.parquet")}, rows={"features": features.height},
        feature_columns=FEATURES, reference_snapshot_uri=BuildManifest.read(build_dir).snapshot_uri,
        feature_config_hash="-", extract="-", extract_content_hash="-", as_of=f"{DAY}T00:00:00",
        score_date=DAY.isoformat(), content_hash="-",
    ).write(str(directory))
    args = ["score", "--features", str(directory), "--model-name", name, "--out", str(tmp_path / "score"), *extra]
    assert main(args) == 0
    return ScoreManifest.read(str(tmp_path / "score"))


def gate(scored: ScoreManifest, tmp_path: Path, predictions: pl.DataFrame | None = None):
    """The output gate on the score step's predictions (or on ``predictions`` in their place)."""
    from features.gates.predictions import validate_predictions

    spine = tmp_path / "spine"
    spine.mkdir(exist_ok=True)
    frame = pl.read_parquet(scored.outputs["predictions"])
    frame.select("entity_id", snapshot_ts=pl.lit(datetime(DAY.year, DAY.month, DAY.day))).write_parquet(
        spine / "spine.parquet"
    )
    ScoringExtractManifest(
        outputs={"spine": str(spine / "spine.parquet")}, rows={"spine": frame.height}, parts=0, content_hash="-",
        as_of=f"{DAY}T00:00:00", score_date=DAY.isoformat(), source={}, snapshots=[f"{DAY}T00:00:00"],
    ).write(str(spine))
    directory = str(tmp_path / "score")
    if predictions is not None:
        directory = str(tmp_path / "score_changed")
        storage.write_parquet(storage.join_uri(directory, "predictions.parquet"), predictions)
        scored.model_copy(update={"outputs": {**scored.outputs,
                                              "predictions": storage.join_uri(directory, "predictions.parquet")}}
                          ).write(directory)
    return validate_predictions(directory, str(spine), str(tmp_path / "gate"))


def publish_and_monitor(scored: ScoreManifest, tmp_path: Path, name: str, labels: pl.DataFrame,
                        *extra: str) -> MonitorManifest:
    """The day's predictions and features where batch prediction publishes them, the realised ``labels``
    (entity_id, label as the warehouse holds it) where extract-labels writes them, then `trainer monitor`."""
    artifact_root = (tmp_path / "artifacts").as_uri()
    day_dir = layout.predictions_dir(artifact_root, name, DAY.isoformat())
    storage.copy_file(scored.outputs["predictions"], storage.join_uri(day_dir, "predictions.parquet"))
    storage.copy_file(scored.outputs["features"], storage.join_uri(day_dir, "features.parquet"))
    labels_dir = str(tmp_path / "labels")
    uri = storage.join_uri(labels_dir, LABELS_FILE)
    storage.write_parquet(uri, labels)
    LabelsManifest(outputs={"labels": uri}, rows={"labels": labels.height}, score_date=DAY.isoformat(),
                   source=LabelSource().describe()).write(labels_dir)
    out = tmp_path / "monitor"
    args = ["monitor", "--model-name", name, "--score-date", DAY.isoformat(), "--artifact-root", artifact_root,
            "--labels", labels_dir, "--out", str(out), *extra]
    assert main(args) == 0
    return MonitorManifest.read(str(out))


def promotion(evaluation: EvaluateManifest, margin: float = 0.0):
    from mlplatform import training

    return training.promotion_decision(evaluation, threshold=0.7, margin=margin)


# --- multiclass ---------------------------------------------------------------------------------------------


def test_multiclass_from_trial_to_monitoring(mlflow_env, tmp_path, capsys):  # noqa: F811
    import mlflow

    mp, name = mlflow_env, "tiers"
    build_dir = make_task_snapshot(tmp_path / "mc", MULTICLASS)

    # trial: early stopping on multiclass log loss, lower is better
    args = ["trial", "--features", build_dir, "--params", json.dumps(FAST), "--seed", "1", "--out",
            str(tmp_path / "trial"), "--log-every", "10"]
    assert main(args) == 0
    trial = TrialManifest.read(str(tmp_path / "trial"))
    assert (trial.task, trial.metric, trial.higher_is_better, trial.valid_auc) == (MULTICLASS, "mlogloss", False, None)
    assert 0 < trial.valid_metric < np.log(3)  # better than guessing uniformly
    assert "round 10/300 valid-mlogloss=" in capsys.readouterr().out

    trained = train(build_dir, tmp_path / "train", name, "mc-1", mp)
    assert trained.task == MULTICLASS and trained.classes == CLASSES
    metrics = trained.metrics
    assert {"test_log_loss", "test_accuracy", "test_macro_f1", "valid_log_loss"} <= set(metrics)
    assert "test_auc" not in metrics
    test = split_frame(build_dir, "test")
    majority = test["label"].value_counts()["count"].max() / test.height
    assert metrics["test_accuracy"] > majority + 0.15 and metrics["test_macro_f1"] > 0.5
    version = client().get_model_version(name, trained.model_version)
    assert version.tags["task"] == MULTICLASS and json.loads(version.tags["classes"]) == CLASSES
    run = client().get_run(version.run_id)
    assert run.data.params["objective"] == "multi:softprob" and run.data.params["num_class"] == "3"
    plots = {a.path for a in client().list_artifacts(version.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/feature_importance.png"}
    reference = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/reference/reference.json")
    assert reference["task"] == MULTICLASS and reference["predicted_class"]["categories"] == CLASSES

    # evaluate: the naive baseline (the train prior) is scored on the same rows; log loss must beat it
    evaluation = evaluate(build_dir, tmp_path / "eval", name, trained.model_version)
    assert evaluation.task == MULTICLASS and evaluation.champion is None
    assert evaluation.challenger.metrics["log_loss"] == pytest.approx(metrics["test_log_loss"], abs=1e-9)
    assert evaluation.baseline["log_loss"] > evaluation.challenger.metrics["log_loss"] + 0.2
    assert evaluation.baseline["accuracy"] == pytest.approx(majority, abs=0.05)
    scores = pl.read_parquet(evaluation.outputs["test_scores"])
    assert set(scores["challenger_predicted_class"].unique()) <= set(CLASSES)
    first = promotion(evaluation)
    assert first.action == "promote" and first.metric == "test_log_loss" and not first.higher_is_better
    assert "naive baseline" in first.reason
    client().set_registered_model_alias(name, "champion", trained.model_version)

    # a weak challenger against that champion: worse log loss, rejected
    weak = train(build_dir, tmp_path / "weak", name, "mc-2", mp, params=WEAK)
    against = evaluate(build_dir, tmp_path / "eval2", name, weak.model_version)
    assert against.champion.comparable and against.champion.version == trained.model_version
    assert promotion(against).action == "reject"

    # score: P(predicted class) and the user's class label
    scored = score_day(build_dir, tmp_path, name)
    assert scored.task == MULTICLASS and scored.classes == CLASSES
    predictions = pl.read_parquet(scored.outputs["predictions"])
    assert predictions.columns == list(PREDICTION_COLUMNS)
    assert predictions["score"].min() >= 1 / 3 - 1e-9 and predictions["score"].max() <= 1
    assert set(predictions["predicted_class"].unique()) <= set(CLASSES)
    assert gate(scored, tmp_path).success
    from features.errors import GateFailed

    with pytest.raises(GateFailed) as failed:
        gate(scored, tmp_path, predictions.with_columns(pl.lit("platinum").alias("predicted_class")))
    assert ("expect_column_values_to_be_in_set", "predicted_class") in {
        (f.expectation, f.column) for f in failed.value.failures
    }

    # monitor: the warehouse holds the user's labels; the champion's log loss is realised by rescoring
    realised_labels = test.select("entity_id", pl.col("label").map_elements(CLASSES.__getitem__,
                                                                             return_dtype=pl.String))
    report = publish_and_monitor(scored, tmp_path, name, realised_labels)
    champion = report.realised.champion
    assert report.task == MULTICLASS and champion.metric == "log_loss" and champion.auc is None
    assert champion.source == "rescored" and champion.rows == test.height
    assert champion.value == pytest.approx(evaluation.challenger.metrics["log_loss"], abs=1e-6)
    assert report.predicted_class_psi < 0.1 and report.prediction_psi < 0.1 and not report.drift_detected

    # a bad promotion: the weak model serves, the previous champion is better on the same rows
    client().set_registered_model_alias(name, "champion", weak.model_version)
    client().set_registered_model_alias(name, "previous-champion", trained.model_version)
    report = publish_and_monitor(scored, tmp_path / "after", name, realised_labels)
    champion, previous = report.realised.champion, report.realised.previous
    assert champion.version == weak.model_version and champion.value > previous.value
    assert previous.value == pytest.approx(evaluation.challenger.metrics["log_loss"], abs=1e-6)
    assert report.rollback.action == "rollback" and not report.rollback.higher_is_better, report.rollback.reason

    # an A/B test: each arm's log loss, its versions rescored on the arm's own rows
    client().set_registered_model_alias(name, "champion", trained.model_version)
    client().delete_registered_model_alias(name, "previous-champion")
    ab_day = score_day(build_dir, tmp_path / "ab", name, None, "--ab-challenger-share", "0.5",
                       "--challenger-version", weak.model_version)
    ab = publish_and_monitor(ab_day, tmp_path / "ab", name, realised_labels).ab
    assert ab.rule == "ab_test" and ab.metric == "log_loss" and ab.action == "keep", ab.reason
    assert (ab.incumbent.version, ab.candidate.version) == (trained.model_version, weak.model_version)
    assert ab.incumbent.rows + ab.candidate.rows == test.height
    assert ab.incumbent.value < ab.candidate.value - 0.2


# --- regression ---------------------------------------------------------------------------------------------


def test_regression_from_trial_to_monitoring(mlflow_env, tmp_path, capsys):  # noqa: F811
    mp, name = mlflow_env, "spend"
    build_dir = make_task_snapshot(tmp_path / "reg", REGRESSION)

    args = ["trial", "--features", build_dir, "--trial-index", "1", "--n-trials", "2", "--max-rounds", "200",
            "--seed", "1", "--out", str(tmp_path / "trial"), "--log-every", "50"]
    assert main(args) == 0
    trial = TrialManifest.read(str(tmp_path / "trial"))
    assert (trial.task, trial.metric, trial.higher_is_better) == (REGRESSION, "rmse", False)
    assert "valid-rmse=" in capsys.readouterr().out

    trained = train(build_dir, tmp_path / "train", name, "reg-1", mp)
    test = split_frame(build_dir, "test")
    assert trained.task == REGRESSION and trained.classes is None
    assert trained.metrics["test_r2"] > 0.7 and trained.metrics["test_rmse"] < float(test["label"].std()) / 2
    assert trained.metrics["test_mae"] < trained.metrics["test_rmse"]
    version = client().get_model_version(name, trained.model_version)
    assert version.tags["task"] == REGRESSION and "classes" not in version.tags
    assert client().get_run(version.run_id).data.params["objective"] == "reg:squarederror"
    plots = {a.path for a in client().list_artifacts(version.run_id, "plots")}
    assert plots == {"plots/predicted_vs_actual.png", "plots/residuals.png", "plots/feature_importance.png"}

    evaluation = evaluate(build_dir, tmp_path / "eval", name, trained.model_version)
    # the baseline predicts the train mean: its RMSE is about the label's standard deviation
    assert evaluation.baseline["rmse"] == pytest.approx(float(test["label"].std()), rel=0.05)
    assert evaluation.baseline["r2"] == pytest.approx(0.0, abs=0.02)
    decision = promotion(evaluation)
    assert decision.action == "promote" and decision.threshold == evaluation.baseline["rmse"]
    client().set_registered_model_alias(name, "champion", trained.model_version)

    scored = score_day(build_dir, tmp_path, name)
    predictions = pl.read_parquet(scored.outputs["predictions"])
    assert predictions["predicted_class"].null_count() == predictions.height
    assert predictions["score"].min() < 0 < predictions["score"].max()  # a prediction, not a probability
    assert gate(scored, tmp_path).success
    from features.errors import GateFailed

    with pytest.raises(GateFailed) as failed:
        gate(scored, tmp_path, predictions.with_columns(pl.lit(float("inf")).alias("score")))
    failures = {(f.expectation, f.column) for f in failed.value.failures}
    assert ("expect_column_values_to_be_between", "score") in failures

    # monitor: realised RMSE straight from the published predictions; a shifted day drifts
    report = publish_and_monitor(scored, tmp_path, name, test.select("entity_id", "label"))
    champion = report.realised.champion
    assert champion.metric == "rmse" and champion.source == "predictions"
    assert champion.value == pytest.approx(trained.metrics["test_rmse"], rel=1e-6)
    assert report.prediction_psi < 0.1 and report.rollback.action == "keep"
    shifted = score_day(build_dir, tmp_path / "shifted", name, test.with_columns(pl.col("x0") + 2.0))
    drifted = publish_and_monitor(shifted, tmp_path / "shifted", name, test.select("entity_id", "label"))
    assert drifted.prediction_psi > 0.2 and drifted.drift_detected


def test_a_champion_of_another_task_is_not_comparable(mlflow_env, tmp_path):  # noqa: F811
    mp, name = mlflow_env, "switch"
    multiclass = make_task_snapshot(tmp_path / "sw-mc", MULTICLASS, seed=4, rows=600)
    regression = make_task_snapshot(tmp_path / "sw-reg", REGRESSION, seed=4, rows=600)
    champion = train(multiclass, tmp_path / "t1", name, "sw-1", mp)
    client().set_registered_model_alias(name, "champion", champion.model_version)
    challenger = train(regression, tmp_path / "t2", name, "sw-2", mp)
    evaluation = evaluate(regression, tmp_path / "eval", name, challenger.model_version)
    assert evaluation.champion.comparable is False and "multiclass" in evaluation.champion.reason
    # Issue 10 changed this: a champion that cannot be compared refuses promotion unless the Param allows it
    decision = promotion(evaluation)
    assert decision.action == "reject" and "could not be compared" in decision.reason
    assert "multiclass" in decision.reason and "allow_incomparable_promotion" in decision.reason


# --- bad labels ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "bad", "message"), [
    (MULTICLASS, 7, "class indices 0..2"),
    (REGRESSION, float("nan"), "infinite or NaN"),
])
def test_bad_labels_are_named_with_the_users_column(tmp_path, capsys, task, bad, message):
    build_dir = make_task_snapshot(tmp_path, task, rows=200)
    uri = storage.join_uri(BuildManifest.read(build_dir).snapshot_uri, "train.parquet")
    frame = pl.read_parquet(storage.local_path(uri))
    dtype = frame["label"].dtype
    frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(bad)).otherwise(pl.col("label"))
                       .cast(dtype).alias("label")).write_parquet(storage.local_path(uri))
    args = ["trial", "--features", build_dir, "--params", "{}", "--seed", "1", "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "'tier'" in err and message in err


def test_best_trial_follows_the_metric_direction():
    from mlplatform import training

    def trial(index: int, value: float) -> TrialManifest:
        return TrialManifest(params={"max_depth": index}, seed=1, trial_index=index, task=REGRESSION,
                             valid_metric=value, metric="rmse", higher_is_better=False, best_iteration=1, rounds=2,
                             device="cpu", snapshot_hash="h", rows={}, fit_seconds=0.1)

    best = training.best_trial([trial(0, 3.0), trial(1, 2.5), trial(2, 2.5), trial(3, 2.9)])
    assert best["trial"] == 1 and best["metric"] == "rmse" and best["valid_metric"] == 2.5
    assert best["valid_auc"] is None


def test_publishing_adds_predicted_class_to_a_table_of_an_older_release(tmp_path):
    import sqlalchemy as sa
    from features.publish import write_predictions_table

    warehouse = f"sqlite:///{tmp_path / 'w.db'}"
    engine = sa.create_engine(warehouse)
    with engine.begin() as conn:  # the table as the release before tasks created it
        conn.execute(sa.text("CREATE TABLE churn_predictions (entity_id TEXT NOT NULL, score_date DATE NOT NULL, "
                             "score FLOAT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, "
                             "alias TEXT NOT NULL, dag_run_id TEXT NOT NULL)"))
    predictions = pl.DataFrame({"entity_id": ["a", "b"], "score_date": [DAY, DAY], "score": [0.7, 0.9],
                                "predicted_class": ["gold", None], "model_name": ["m", "m"],
                                "model_version": ["1", "1"], "alias": ["champion"] * 2, "dag_run_id": ["r"] * 2})
    assert write_predictions_table(warehouse, "churn_predictions", predictions)["inserted"] == 2
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT entity_id, predicted_class FROM churn_predictions ORDER BY 1")).fetchall()
    engine.dispose()
    assert [tuple(row) for row in rows] == [("a", "gold"), ("b", None)]


def test_realised_labels_are_read_as_the_models_task_stores_them(tmp_path):
    from mlcontract.errors import StepInputError
    from trainer.monitor import read_labels
    from trainer.tracking import ModelTask

    def labels(values: list) -> str:
        directory = str(tmp_path / f"labels{len(list(tmp_path.iterdir()))}")
        uri = storage.join_uri(directory, LABELS_FILE)
        storage.write_parquet(uri, pl.DataFrame({"entity_id": [f"c{i}" for i in range(len(values))], "label": values}))
        LabelsManifest(outputs={"labels": uri}, rows={"labels": len(values)}, score_date=DAY.isoformat(),
                       source=LabelSource().describe()).write(directory)
        return directory

    _, tiers = read_labels(labels(["gold", "bronze", "platinum"]), DAY, ModelTask(MULTICLASS, CLASSES))
    assert tiers.sort("entity_id")["label"].to_list() == [2, 0]  # "platinum" is no class of the model: left out
    _, spend = read_labels(labels([1.5, 2.0]), DAY, ModelTask(REGRESSION))
    assert spend["label"].dtype == pl.Float64
    with pytest.raises(StepInputError, match="regression model"):
        read_labels(labels(["a lot", "little"]), DAY, ModelTask(REGRESSION))

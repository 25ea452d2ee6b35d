"""`trainer monitor` on hand-made predictions, features and labels, with a real MLflow registry (SQLite).

Two models are trained on a synthetic snapshot with a known signal (see test_trainer.make_snapshot): a good
one and a weak one (one shallow tree). The tests set the aliases they need, write the day's batch-prediction
files (the batch_prediction contract) and the `features extract-labels` step's output (labels.parquet +
LabelsManifest), then read the monitor's manifest.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before xgboost loads: see trainer.cli.main

import json
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlcontract import layout, storage
from mlcontract.errors import SourceError
from mlcontract.manifests import BuildManifest, LabelsManifest, MonitorManifest
from mlcontract.manifests.trainer import MonitorThresholds, Realised
from mlcontract.names import LABELS_FILE
from mlcontract.rules import INSUFFICIENT, KEEP, PROMOTE, ROLLBACK, Score, decide_ab, decide_rollback
from mlcontract.source import LabelSource
from test_trainer import FAST, FEATURES, make_snapshot
from trainer import predict
from trainer.cli import main

MODEL = "mon-churn"
DAY = date(2024, 2, 4)  # the synthetic snapshot's test date: features and labels exist for it
WEAK = {"max_depth": 1, "n_estimators": 1, "learning_rate": 0.1}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A snapshot, an MLflow registry with a good (v1) and a weak (v2) version, and the test split."""
    root = tmp_path_factory.mktemp("monitoring")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("MLFLOW_ARTIFACT_LOCATION", str(root / "artifacts"))
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "test-monitoring")
        mp.setenv("PIPELINE_DAG_ID", "ml_model_training")
        mp.delenv("WAREHOUSE_URI", raising=False)
        features, _ = make_snapshot(root, FEATURES, seed=3, rows=2000)
        for run_id, params in (("good", FAST), ("weak", WEAK)):
            mp.setenv("PIPELINE_RUN_ID", run_id)
            args = ["train", "--features", features, "--params", json.dumps(params), "--seed", "1",
                    "--model-name", MODEL, "--out", str(root / run_id)]
            assert main(args) == 0
        snapshot_uri = BuildManifest.read(features).snapshot_uri
        test = pl.read_parquet(storage.local_path(storage.join_uri(snapshot_uri, "test.parquet")))
        yield {"root": root, "test": test, "uri": os.environ["MLFLOW_TRACKING_URI"]}


def client(registry):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=registry["uri"])


def set_aliases(registry, **aliases: str | None) -> None:
    for alias, version in aliases.items():
        name = alias.replace("_", "-")
        if version is None:
            client(registry).delete_registered_model_alias(MODEL, name)
        else:
            client(registry).set_registered_model_alias(MODEL, name, version)


def publish_day(root: Path, features: pl.DataFrame, arms: dict[str, str]) -> str:
    """The batch_prediction contract for DAY: predictions.parquet (scored per arm) and features.parquet.

    ``arms`` maps alias → version; with two arms, alternate entities go to each. Returns the artifact root.
    """
    artifact_root = root.as_uri()
    day_dir = layout.predictions_dir(artifact_root, MODEL, DAY.isoformat())
    frame = features.with_columns(pl.lit(datetime(DAY.year, DAY.month, DAY.day)).alias("snapshot_ts"))
    parts = []
    for index, (alias, version) in enumerate(arms.items()):
        arm = frame.filter(pl.int_range(pl.len()) % len(arms) == index)
        scores = predict.predict(f"models:/{MODEL}/{version}", arm)
        parts.append(arm.select("entity_id", pl.col("snapshot_ts").dt.date().alias("score_date")).with_columns(
            pl.Series("score", scores), pl.lit(MODEL).alias("model_name"), pl.lit(version).alias("model_version"),
            pl.lit(alias).alias("alias"), pl.lit("manual__test").alias("dag_run_id"),
        ))
    path = storage.local_path(day_dir)
    path.mkdir(parents=True, exist_ok=True)
    pl.concat(parts).write_parquet(path / "predictions.parquet")
    frame.select("entity_id", "snapshot_ts", *FEATURES).write_parquet(path / "features.parquet")
    return artifact_root


def extracted_labels(
    root: Path, test: pl.DataFrame, day: date = DAY, source: LabelSource | None = None, score_date: date = DAY
) -> str:
    """What `features extract-labels --score-date score_date` writes when the warehouse holds the test
    split's labels at ``day``: only the labels of the score date (an empty file when there are none)."""
    directory = root / f"extract_labels_{day.isoformat()}"
    frame = test.select(pl.col("entity_id").cast(pl.Utf8), pl.col("label").cast(pl.Int8))
    if day != score_date:
        frame = frame.clear()
    uri = storage.join_uri(str(directory), LABELS_FILE)
    storage.write_parquet(uri, frame)
    LabelsManifest(
        outputs={"labels": uri}, rows={"labels": frame.height}, score_date=score_date.isoformat(),
        source=(source or LabelSource()).describe(),
    ).write(str(directory))
    return str(directory)


def monitor(registry, tmp_path, artifact_root: str, labels: str | None, *extra: str) -> dict:
    out = tmp_path / "monitor"
    args = ["monitor", "--model-name", MODEL, "--score-date", DAY.isoformat(),
            "--artifact-root", artifact_root, "--out", str(out), *extra]
    assert main([*args, "--labels", labels] if labels else args) == 0
    return MonitorManifest.read(str(out)).model_dump(mode="json")


# --- pure rules -------------------------------------------------------------------------------------------


def test_ab_decision_rule():
    rules = {"min_rows": 100, "margin": 0.01}
    arm = lambda auc, rows=500: Score(value=auc, rows=rows)
    assert decide_ab(arm(0.80), arm(0.82), **rules).action == PROMOTE
    assert decide_ab(arm(0.80), arm(0.805), **rules).action == KEEP
    assert decide_ab(arm(0.80), arm(0.90, rows=50), **rules).action == INSUFFICIENT
    assert decide_ab(arm(None), arm(0.90), **rules).action == INSUFFICIENT


def test_rollback_rule_needs_a_comparable_previous_champion_and_enough_rows():
    rules = {"min_rows": 100, "margin": 0.01}
    champion = Score(version="2", value=0.70, rows=500)
    assert decide_rollback(champion, Score(version="1", value=0.80), **rules).acts is True
    assert decide_rollback(champion, Score(version="1", value=0.705), **rules).acts is False
    assert decide_rollback(champion, Score(version="1", comparable=False, reason="x"), **rules).acts is False
    assert decide_rollback(champion, None, **rules).acts is False
    few_rows = champion.model_copy(update={"rows": 10})
    assert decide_rollback(few_rows, Score(version="1", value=0.9), **rules).acts is False


# --- the step ---------------------------------------------------------------------------------------------


def test_training_logs_the_reference_with_the_model(registry):
    import mlflow

    version = client(registry).get_model_version(MODEL, "1")
    reference = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/reference/reference.json")
    assert reference["feature_columns"] == FEATURES
    for name in FEATURES:
        entry = reference["features"][name]
        assert len(entry["proportions"]) == len(entry["cuts"]) + 2
        assert sum(entry["proportions"]) == pytest.approx(1.0)
    assert len(reference["features"]["x0"]["cuts"]) == 9  # continuous: 10 quantile bins
    assert reference["features"]["x5"]["proportions"][-1] > 0.02  # its missing values have a bin
    assert len(reference["score"]["proportions"]) == 11 and reference["score"]["rows"] == 2000


def test_no_drift_on_data_like_the_training_data(registry, tmp_path):
    set_aliases(registry, champion="1", previous_champion=None)
    root = publish_day(tmp_path, registry["test"], {"champion": "1"})
    report = monitor(registry, tmp_path, root, None)
    assert report["drift_evaluated"] is True and report["reference"]["version"] == "1"
    assert set(report["psi"]) == set(FEATURES)
    assert max(report["psi"].values()) < 0.1, report["psi"]
    assert report["prediction_psi"] < 0.1
    assert report["drift_detected"] is False and report["breached_features"] == []
    assert report["labels_available"] is False and report["realised"] == {"champion": None, "previous": None}
    assert report["rollback"]["action"] == KEEP and report["ab"] is None


def test_shifted_features_are_detected_as_drift(registry, tmp_path):
    set_aliases(registry, champion="1", previous_champion=None)
    shifted = registry["test"].with_columns(pl.col("x0") + 1.5, pl.col("x1") * 3)
    report = monitor(registry, tmp_path, publish_day(tmp_path, shifted, {"champion": "1"}), None,
                     "--psi-threshold", "0.2")
    assert report["drift_detected"] is True
    assert set(report["breached_features"]) >= {"x0", "x1"}
    assert report["psi"]["x0"] > 0.2 and report["psi"]["x2"] < 0.1
    assert report["prediction_psi"] > 0.2  # x0 drives the score: the predictions shift too
    ignoring = monitor(registry, tmp_path, publish_day(tmp_path, shifted, {"champion": "1"}), None,
                       "--ignore-features", "x0, x1")
    assert ignoring["ignored_features"] == ["x0", "x1"] and not {"x0", "x1"} & set(ignoring["psi"])
    assert ignoring["breached_features"] == []


def test_realised_auc_and_rollback_when_the_champion_is_worse_than_the_previous(registry, tmp_path):
    set_aliases(registry, champion="2", previous_champion="1")  # a bad promotion: the weak model serves
    root = publish_day(tmp_path, registry["test"], {"champion": "2"})
    report = monitor(registry, tmp_path, root, extracted_labels(tmp_path, registry["test"]))
    champion, previous = report["realised"]["champion"], report["realised"]["previous"]
    assert report["labels_available"] is True and report["rows"]["labels"] == registry["test"].height
    assert champion["version"] == "2" and champion["rows"] == registry["test"].height
    assert previous["version"] == "1" and previous["comparable"] is True and previous["rows"] == champion["rows"]
    assert previous["auc"] > champion["auc"] + 0.05
    assert report["rollback"]["action"] == ROLLBACK, report["rollback"]["reason"]
    assert report["rollback"]["incumbent"]["version"] == "2" and report["rollback"]["candidate"]["version"] == "1"


def test_no_rollback_when_the_champion_is_the_better_model(registry, tmp_path):
    set_aliases(registry, champion="1", previous_champion="2")
    # predictions made by v2 before the alias moved: the champion's window is rescored with v1
    root = publish_day(tmp_path, registry["test"], {"champion": "2"})
    report = monitor(registry, tmp_path, root, extracted_labels(tmp_path, registry["test"]))
    assert report["realised"]["champion"]["source"] == "rescored"
    assert report["realised"]["champion"]["auc"] > report["realised"]["previous"]["auc"]
    assert report["rollback"]["action"] == KEEP


def test_previous_champion_without_its_columns_is_not_comparable(registry, tmp_path):
    set_aliases(registry, champion="2", previous_champion="1")
    root = publish_day(tmp_path, registry["test"], {"champion": "2"})
    features = storage.local_path(
        storage.join_uri(layout.predictions_dir(root, MODEL, DAY.isoformat()), "features.parquet")
    )
    pl.read_parquet(features).drop("visits").write_parquet(features)
    report = monitor(registry, tmp_path, root, extracted_labels(tmp_path, registry["test"]))
    previous = report["realised"]["previous"]
    assert previous["comparable"] is False and "visits" in previous["reason"]
    assert report["rollback"]["action"] == KEEP and "visits" in report["rollback"]["reason"]
    assert report["missing_features"] == ["visits"]


@pytest.mark.parametrize(("arms", "decision"), [({"champion": "1", "challenger": "2"}, KEEP),
                                                ({"champion": "2", "challenger": "1"}, PROMOTE)])
def test_ab_test_arms_are_compared_on_their_labels(registry, tmp_path, arms, decision):
    set_aliases(registry, champion=arms["champion"], challenger=arms["challenger"], previous_champion=None)
    root = publish_day(tmp_path, registry["test"], arms)
    report = monitor(registry, tmp_path, root, extracted_labels(tmp_path, registry["test"]))
    ab = report["ab"]
    assert ab["rule"] == "ab_test" and ab["action"] == decision
    champion_arm, challenger_arm = ab["incumbent"], ab["candidate"]
    assert champion_arm["version"] == arms["champion"] and challenger_arm["version"] == arms["challenger"]
    assert champion_arm["rows"] + challenger_arm["rows"] == registry["test"].height
    assert report["realised"]["champion"]["rows"] == champion_arm["rows"]


def test_labels_of_another_day_are_not_used(registry, tmp_path):
    set_aliases(registry, champion="1", previous_champion=None)
    root = publish_day(tmp_path, registry["test"], {"champion": "1"})
    report = monitor(registry, tmp_path, root, extracted_labels(tmp_path, registry["test"], day=date(2024, 2, 5)))
    assert report["labels_available"] is False and report["rollback"]["action"] == KEEP


def test_labels_extracted_for_another_score_date_are_refused(registry, tmp_path, capsys):
    set_aliases(registry, champion="1", previous_champion=None)
    root = publish_day(tmp_path, registry["test"], {"champion": "1"})
    labels = extracted_labels(tmp_path, registry["test"], day=date(2024, 2, 5), score_date=date(2024, 2, 5))
    args = ["monitor", "--model-name", MODEL, "--score-date", DAY.isoformat(), "--artifact-root", root,
            "--labels", labels, "--out", str(tmp_path / "monitor")]
    assert main(args) == 1
    assert "2024-02-05" in capsys.readouterr().err
    assert not MonitorManifest.exists(str(tmp_path / "monitor"))


def test_missing_predictions_fail_naming_the_file(registry, tmp_path, capsys):
    args = ["monitor", "--model-name", MODEL, "--score-date", DAY.isoformat(),
            "--artifact-root", (tmp_path / "nothing").as_uri(), "--out", str(tmp_path / "monitor")]
    assert main(args) == 1
    assert "predictions.parquet" in capsys.readouterr().err


def test_labels_query_and_bad_identifiers(registry, tmp_path):
    set_aliases(registry, champion="1", previous_champion=None)
    root = publish_day(tmp_path, registry["test"], {"champion": "1"})
    source = LabelSource(labels_table=None,
                         labels_query="SELECT customer_id AS cid, snapshot_ts AS snap, churned AS y FROM churn_labels",
                         entity_key="cid", snapshot_column="snap", label_column="y")
    report = monitor(registry, tmp_path, root, extracted_labels(tmp_path, registry["test"], source=source))
    assert report["realised"]["champion"]["rows"] == registry["test"].height
    assert report["labels_source"]["labels_query"].startswith("SELECT")
    # the extract-labels step's options are checked as plain identifiers before any SQL runs
    with pytest.raises(SourceError, match="entity-key"):
        LabelSource(entity_key="id; drop table x")
    assert np.isfinite(report["realised"]["champion"]["auc"])


# --- the DAG's wiring -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitoring_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "model_monitoring.py"))
    assert bag.import_errors == {}
    return bag.dags["model_monitoring"]


def test_dag_acts_only_on_the_report_and_survives_skips(monitoring_dag):
    from mlplatform.assets import DRIFT_ASSET

    dag = monitoring_dag
    # the realised labels come from a features step, so the trainer's monitor pod reads no warehouse; it
    # reads them as the champion's task stores them, so it runs once the champion is resolved
    labels, monitor = dag.get_task("extract_labels"), dag.get_task("monitor")
    assert labels.upstream_task_ids == {"resolve_champion"}
    assert dag.get_task("resolve_champion").upstream_task_ids == {"resolve_score_date"}
    assert "extract_labels" in monitor.upstream_task_ids
    assert monitor.upstream_task_ids <= {"resolve_score_date", "resolve_champion", "extract_labels"}
    assert dag.get_task("read_report").upstream_task_ids == {"monitor"}
    emit = dag.get_task("emit_retrain_signal")
    assert emit.outlets == [DRIFT_ASSET] and emit.upstream_task_ids == {"read_report"}
    # a skipped retrain signal or rollback must not skip the A/B decision
    assert dag.get_task("rollback_if_degraded").upstream_task_ids == {"read_report"}
    ab = dag.get_task("decide_ab_test")
    assert ab.upstream_task_ids == {"read_report", "rollback_if_degraded"}
    assert ab.trigger_rule == "none_failed"
    assert "WAREHOUSE_URI" in {e.name for e in labels.env_vars}  # reads realised labels
    assert "WAREHOUSE_URI" not in {e.name for e in monitor.env_vars}


def test_retrain_signal_is_skipped_without_drift_and_emitted_with_it(monitoring_dag):
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    emit = monitoring_dag.get_task("emit_retrain_signal").python_callable
    quiet = MonitorManifest(
        model_name=MODEL, score_date=DAY.isoformat(), rows={}, reference={}, thresholds=MonitorThresholds(psi=0.2),
        ignored_features=[], drift_evaluated=True, drift_note=None, psi={"x0": 0.01}, breached_features=[],
        missing_features=[], drift_detected=False, labels_available=False, realised=Realised(),
        rollback=decide_rollback(None, None, margin=0.01, min_rows=100),
    )
    with pytest.raises(AirflowSkipException, match="no drift"):
        emit(quiet.model_dump(mode="json"), dag=SimpleNamespace(dag_id="model_monitoring"), run_id="r1")
    drifted = quiet.model_copy(update={"drift_detected": True, "breached_features": ["x0"], "psi": {"x0": 0.9}})
    assert emit(drifted.model_dump(mode="json"), dag=SimpleNamespace(dag_id="model_monitoring"), run_id="r1") == ["x0"]

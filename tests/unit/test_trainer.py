"""Trainer: search space, trial, final fit + registration, evaluation against the champion, scoring.

A synthetic snapshot with a known signal stands in for `features build`; MLflow runs on SQLite under a
temporary directory. The registry is shared by the module (creating its tables costs seconds); each test
uses its own registered model name.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before xgboost loads: see trainer.cli.main

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlcontract import storage
from mlcontract.manifests import (
    BuildManifest,
    EvaluateManifest,
    ExtractManifest,
    GateManifest,
    SnapshotManifest,
    TrainManifest,
    TrialManifest,
)
from trainer import model
from trainer.cli import main

FEATURES = [f"x{i}" for i in range(8)] + ["visits"]
FAST = {"learning_rate": 0.1, "max_depth": 4, "n_estimators": 400, "early_stopping_rounds": 20}
SECRET = "s3cr3t-pa55word"


def _split(rng: np.random.Generator, n: int, dates: list[datetime], columns: list[str]) -> pl.DataFrame:
    x = rng.normal(size=(n, 8))
    visits = rng.poisson(3, size=n)
    logit = 1.6 * x[:, 0] - 1.2 * x[:, 1] + 0.9 * x[:, 2] * x[:, 3] + 0.8 * (x[:, 4] > 0.5) - 0.3 * visits
    p_true = 1 / (1 + np.exp(-logit))
    x[rng.random(n) < 0.05, 5] = np.nan  # missing values must pass through as missing
    frame = pl.DataFrame(
        {
            "entity_id": [f"c{i:06d}" for i in range(n)],
            "snapshot_ts": [dates[i % len(dates)] for i in range(n)],
            "label": (rng.random(n) < p_true).astype(np.int8),
            **{f"x{i}": x[:, i] for i in range(8)},
            "visits": visits.astype(np.int64),
            "legacy_feature": rng.normal(size=n),
            "p_true": p_true,
        }
    ).with_columns(pl.col("x5").fill_nan(None))
    return frame.select("entity_id", "snapshot_ts", "label", *columns, "p_true")


def make_snapshot(root: Path, columns: list[str], seed: int = 0, rows: int = 3000) -> tuple[str, float]:
    """A build step dir + content-addressed snapshot; returns (build dir, oracle test AUC)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    day = datetime(2024, 1, 7)
    dates = {
        "train": [day + timedelta(weeks=k) for k in range(3)],
        "valid": [day + timedelta(weeks=3)],
        "test": [day + timedelta(weeks=4)],
    }
    sizes = {"train": rows * 2, "valid": rows, "test": rows}
    snapshot_hash = f"hash-{seed}-{len(columns)}"
    snapshot_uri = (root / "features" / snapshot_hash).as_uri()
    oracle = 0.0
    for split, n in sizes.items():
        frame = _split(rng, n, dates[split], columns)
        if split == "test":
            oracle = float(roc_auc_score(frame["label"], frame["p_true"]))
        path = storage.local_path(storage.join_uri(snapshot_uri, f"{split}.parquet"))
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.drop("p_true").write_parquet(path)
    splits = {k: [str(d.date()) for d in v] for k, v in dates.items()}
    SnapshotManifest(
        snapshot_hash=snapshot_hash, feature_columns=columns, rows=sizes, label_rate={}, splits=splits,
        feature_config={}, categories={}, code_version="test",
    ).write(snapshot_uri)
    extract_dir = str(root / "runs" / "extract")
    ExtractManifest(
        rows={}, parts=0, content_hash="abc", snapshots=[],
        source={"events_table": "events", "labels_table": "churn_labels"},
    ).write(extract_dir)
    build_dir = str(root / "runs" / f"build-{snapshot_hash}")
    # No copy of the source in the build manifest: lineage follows `extract` to the extract's manifest.
    BuildManifest(
        outputs={"snapshot": snapshot_uri}, snapshot_uri=snapshot_uri, snapshot_hash=snapshot_hash, reused=False,
        extract=extract_dir, extract_content_hash="abc", feature_columns=columns, rows=sizes, label_rate={},
        splits=splits, feature_config={},
    ).write(build_dir)
    return build_dir, oracle


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> tuple[str, float]:
    return make_snapshot(tmp_path_factory.mktemp("snap"), FEATURES)


@pytest.fixture(scope="module")
def mlflow_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # nothing may land in the working directory of the test run
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("MLFLOW_ARTIFACT_LOCATION", str(root / "artifacts"))
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "test-churn")
        mp.setenv("PIPELINE_DAG_ID", "ml_model_training")
        mp.setenv("PIPELINE_TASK_ID", "train")
        mp.setenv("IMAGE_REF", "registry.local/trainer@sha256:1234")
        mp.setenv("CODE_VERSION", "test-1.2.3")
        mp.setenv("WAREHOUSE_URI", f"postgresql://etl:{SECRET}@db/warehouse")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
        yield mp


@pytest.fixture
def validation_dir(tmp_path) -> str:
    directory = tmp_path / "validate_features"
    (directory / "validation.json").parent.mkdir(parents=True)
    (directory / "validation.json").write_text(json.dumps({"success": True, "results": []}))
    GateManifest(
        step="validate-features", results_uri=str(directory / "validation.json"), success=True, failures=[],
        rows={"features": 0}, expectations=0, input="features",
    ).write(str(directory))
    return str(directory)


def train(
    features: str,
    out: Path,
    name: str,
    run_id: str,
    mp: pytest.MonkeyPatch,
    seed: int = 7,
    extra: list[str] = (),
) -> dict:
    mp.setenv("PIPELINE_RUN_ID", run_id)
    args = [
        "train",
        "--features",
        features,
        "--params",
        json.dumps(FAST),
        "--seed",
        str(seed),
        "--model-name",
        name,
        "--out",
        str(out),
        "--log-every",
        "50",
        *extra,
    ]
    assert main(args) == 0
    return TrainManifest.read(str(out)).model_dump(mode="json")


def evaluate(features: str, out: Path, name: str, version: str) -> dict:
    assert (
        main(
            [
                "evaluate",
                "--features",
                features,
                "--model-name",
                name,
                "--challenger-version",
                version,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return EvaluateManifest.read(str(out)).model_dump(mode="json")


# --- search space and parameters (no data) ---------------------------------------------------------


def test_search_space_is_deterministic_distinct_and_valid():
    first, again, other = (
        model.search_space(12, seed=3),
        model.search_space(12, seed=3),
        model.search_space(12, 4),
    )
    assert first == again
    assert first != other
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 12
    assert first[0] == model.DEFAULT_PARAMS
    for params in first:
        assert model.resolve_params(params) == params
        assert 3 <= params["max_depth"] <= 8 and 0.03 <= params["learning_rate"] <= 0.1
        assert 0.6 <= params["subsample"] <= 1 and 0.4 <= params["colsample_bytree"] <= 1


def test_model_module_stays_light():
    import subprocess
    import sys

    code = "import sys, trainer.model; trainer.model.search_space(4, 0); print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_trial_imports_xgboost_without_scikit_learn(tmp_path, snapshot):
    """A trial process never loads scikit-learn (xgboost would import it, 2-3 s, for wrappers nobody uses);
    scikit-learn still imports afterwards, and xgboost trains as usual."""
    import subprocess
    import sys

    features, _ = snapshot
    code = (
        "import sys\n"
        "from trainer.cli import main\n"
        f"assert main(['trial', '--features', {features!r}, '--params', '{{\"n_estimators\": 5}}',"
        f" '--seed', '1', '--out', {str(tmp_path / 'trial')!r}]) == 0\n"
        "print('sklearn' in sys.modules)\n"
        "import xgboost.compat, sklearn.metrics\n"
        "print(xgboost.compat.SKLEARN_INSTALLED)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-2:] == ["False", "False"]  # sklearn loaded; xgboost saw no sklearn
    assert TrialManifest.read(str(tmp_path / "trial")).rounds == 5


def test_resolve_params_rejects_unknown_and_ignores_results():
    assert model.resolve_params({"eta": 0.07, "best_iteration": 12})["learning_rate"] == 0.07
    with pytest.raises(ValueError, match="max_depht"):
        model.resolve_params({"max_depht": 3})


def test_cli_rejects_bad_params(tmp_path, snapshot, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "trial",
                "--features",
                snapshot[0],
                "--params",
                '{"max_depht": 3}',
                "--seed",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code != 0
    assert "max_depht" in capsys.readouterr().err


# --- trial --------------------------------------------------------------------------------------------


def test_trial_writes_complete_manifest_and_stops_early(tmp_path, snapshot, capsys):
    features, oracle = snapshot
    params = {**FAST, "learning_rate": 0.3, "n_estimators": 2000}
    assert (
        main(
            [
                "trial",
                "--features",
                features,
                "--params",
                json.dumps(params),
                "--seed",
                "5",
                "--out",
                str(tmp_path),
                "--log-every",
                "10",
            ]
        )
        == 0
    )
    manifest = TrialManifest.read(str(tmp_path)).model_dump(mode="json")
    assert manifest["step"] == "trial" and manifest["outputs"] == {}
    assert manifest["params"] == model.resolve_params(params)
    assert manifest["params"]["n_estimators"] == 2000
    assert manifest["device"] == "cpu" and manifest["seed"] == 5
    # early stopping: ran exactly `early_stopping_rounds` past the best round, far short of the budget
    assert manifest["rounds"] == manifest["best_iteration"] + 1 + params["early_stopping_rounds"]
    assert manifest["rounds"] < 2000
    assert 0.9 * oracle < manifest["valid_auc"] <= 1
    assert manifest["seconds"] > 0
    assert "round 10/2000 valid-auc=" in capsys.readouterr().out


def test_trial_by_search_space_index(tmp_path, snapshot):
    features, _ = snapshot
    args = [
        "trial",
        "--features",
        features,
        "--trial-index",
        "2",
        "--n-trials",
        "4",
        "--seed",
        "9",
        "--max-rounds",
        "30",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    manifest = TrialManifest.read(str(tmp_path)).model_dump(mode="json")
    assert manifest["trial_index"] == 2
    assert manifest["params"] == {**model.search_space(4, 9)[2], "n_estimators": 30}
    assert manifest["rounds"] <= 30


@pytest.mark.parametrize(
    "extra",
    [
        ["--params", "{}", "--trial-index", "0", "--n-trials", "2"],
        ["--trial-index", "5", "--n-trials", "2"],
        [],
    ],
)
def test_trial_needs_exactly_one_way_to_get_params(tmp_path, snapshot, extra):
    with pytest.raises(SystemExit) as exit_info:
        main(["trial", "--features", snapshot[0], "--seed", "1", "--out", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    assert not (tmp_path / "manifest.json").exists()


def test_fit_is_deterministic_for_a_seed(snapshot):
    from trainer.data import load_snapshot

    snap = load_snapshot(snapshot[0], splits=("train", "valid"))
    data = [(snap[s].features(FEATURES), snap[s].label) for s in ("train", "valid")]
    params = {**FAST, "subsample": 0.7, "colsample_bytree": 0.7}
    one, two = (model.fit(*data, FEATURES, params, seed=11) for _ in range(2))
    other = model.fit(*data, FEATURES, params, seed=12)
    assert one.booster.save_raw("json") == two.booster.save_raw("json")
    x_valid = data[1][0]
    assert np.array_equal(
        model.predict_proba(one.booster, x_valid, FEATURES),
        model.predict_proba(two.booster, x_valid, FEATURES),
    )
    assert one.booster.save_raw("json") != other.booster.save_raw("json")


def test_missing_feature_column_is_named(tmp_path, snapshot, capsys):
    manifest = BuildManifest.read(snapshot[0])
    broken = str(tmp_path / "build")
    manifest.model_copy(update={"feature_columns": [*FEATURES, "no_such_feature"]}).write(broken)
    assert main(["trial", "--features", broken, "--params", "{}", "--seed", "1", "--out", str(tmp_path / "o")]) == 1
    assert "no_such_feature" in capsys.readouterr().err


# --- train ------------------------------------------------------------------------------------------


def test_train_registers_challenger_with_lineage(tmp_path, snapshot, mlflow_env, validation_dir):
    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    features, oracle = snapshot
    manifest = train(
        features,
        tmp_path / "train",
        "churn-a",
        "scheduled__2024-02-04",
        mlflow_env,
        extra=["--validations", validation_dir],
    )
    client = MlflowClient()
    version = client.get_model_version_by_alias("churn-a", "challenger")
    assert manifest["model_version"] == str(version.version) == "1"
    assert manifest["model_uri"] == "models:/churn-a/1"
    assert manifest["mlflow_run_id"] == version.run_id
    assert manifest["feature_columns"] == FEATURES
    assert manifest["metrics"]["test_auc"] >= 0.95 * oracle
    for key in ("valid_auc", "test_pr_auc", "test_log_loss", "test_brier", "test_f1", "best_iteration"):
        assert key in manifest["metrics"]
    assert manifest["params"] == model.resolve_params(FAST)

    info = get_model_info("models:/churn-a/1")
    assert info.signature.inputs.input_names() == FEATURES

    run = client.get_run(version.run_id)
    artifacts = {
        a.path
        for d in ("plots", "validations/validate_features")
        for a in client.list_artifacts(run.info.run_id, d)
    }
    assert {
        "plots/roc.png",
        "plots/pr.png",
        "plots/feature_importance.png",
        "plots/confusion_matrix.png",
        "validations/validate_features/validation.json",
        "validations/validate_features/manifest.json",
    } <= artifacts
    assert (tmp_path / "train" / "plots" / "roc.png").stat().st_size > 1000

    expected = {
        "snapshot_hash": "hash-0-9",
        "airflow_dag_id": "ml_model_training",
        "airflow_run_id": "scheduled__2024-02-04",
        "airflow_task_id": "train",
        "pipeline_run_key": "ml_model_training/scheduled__2024-02-04",
        "seed": "7",
        "code_version": "test-1.2.3",
        "image_ref": "registry.local/trainer@sha256:1234",
    }
    for tags in (run.data.tags, version.tags):
        assert expected.items() <= tags.items()
        assert "churn_labels" in tags["source"]
        assert tags["extract_content_hash"] == "abc"  # followed the build manifest to the extract's source
    assert run.data.tags["validation.validate_features.success"] == "true"
    assert float(run.data.params["max_depth"]) == FAST["max_depth"]
    assert run.data.metrics["test_auc"] == pytest.approx(manifest["metrics"]["test_auc"])

    logged = json.dumps([run.data.params, run.data.tags, version.tags, manifest])
    assert SECRET not in logged and "sqlite" not in logged


def test_rerun_reuses_version_and_same_seed_gives_same_model(tmp_path, snapshot, mlflow_env):
    from mlflow import MlflowClient
    from trainer.predict import predict

    features, _ = snapshot
    first = train(features, tmp_path / "a", "churn-b", "manual__1", mlflow_env)
    client = MlflowClient()
    client.delete_registered_model_alias("churn-b", "challenger")
    rerun = train(features, tmp_path / "b", "churn-b", "manual__1", mlflow_env)
    assert rerun == first
    versions = client.search_model_versions("name = 'churn-b'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias("churn-b", "challenger").version) == "1"

    # Issue 10: another pipeline run on the same snapshot, seed, params and code reuses the identical
    # version instead of registering a second one, and says which run registered it
    second = train(features, tmp_path / "c", "churn-b", "manual__2", mlflow_env)
    assert second["model_version"] == "1" and second["reused_from"] == "ml_model_training/manual__1"
    assert [str(v.version) for v in client.search_model_versions("name = 'churn-b'")] == ["1"]
    # another seed is another fit: a new version, and the same seed gives the same model
    third = train(features, tmp_path / "d", "churn-b", "manual__3", mlflow_env, seed=8)
    assert third["model_version"] == "2" and third["reused_from"] is None
    assert str(client.get_model_version_by_alias("churn-b", "challenger").version) == "2"
    test = pl.read_parquet(
        storage.local_path(storage.join_uri(BuildManifest.read(features).snapshot_uri, "test.parquet"))
    )
    assert np.array_equal(predict(first["model_uri"], test), predict(second["model_uri"], test))


# --- evaluate ---------------------------------------------------------------------------------------


def test_evaluate_without_champion(tmp_path, snapshot, mlflow_env):
    from mlflow import MlflowClient

    features, _ = snapshot
    trained = train(features, tmp_path / "train", "churn-c", "run-c", mlflow_env)
    result = evaluate(features, tmp_path / "eval", "churn-c", trained["model_version"])
    assert result["champion"] is None
    assert result["challenger"]["version"] == "1"
    assert result["test_rows"] == result["challenger"]["metrics"]["rows"] == 3000
    # the registered model scores the test split exactly as the in-process booster did
    assert result["challenger"]["metrics"]["auc"] == pytest.approx(trained["metrics"]["test_auc"], abs=1e-9)
    run = MlflowClient().get_run(trained["mlflow_run_id"])
    assert run.data.metrics["eval_challenger_auc"] == pytest.approx(result["challenger"]["metrics"]["auc"])
    assert run.data.tags["eval_champion_version"] == "none"


def test_evaluate_against_champion_on_older_feature_set(tmp_path, snapshot, mlflow_env):
    from mlflow import MlflowClient

    features, _ = snapshot
    # the champion knows fewer features: it is scored on its own signature's columns
    older, _ = make_snapshot(tmp_path / "older", FEATURES[:-3], seed=1)
    champion = train(older, tmp_path / "t1", "churn-d", "run-d1", mlflow_env)
    client = MlflowClient()
    client.set_registered_model_alias("churn-d", "champion", champion["model_version"])
    challenger = train(features, tmp_path / "t2", "churn-d", "run-d2", mlflow_env)

    result = evaluate(features, tmp_path / "eval", "churn-d", challenger["model_version"])
    assert result["champion"]["version"] == "1" and result["champion"]["comparable"] is True
    assert result["challenger"]["version"] == "2"
    assert result["champion"]["metrics"]["rows"] == result["challenger"]["metrics"]["rows"] == 3000
    assert result["challenger"]["metrics"]["auc"] > result["champion"]["metrics"]["auc"]  # x5..x7 are noise,
    # but the champion never saw `visits`, which carries signal
    scores = pl.read_parquet(storage.local_path(result["outputs"]["test_scores"]))
    assert scores.height == 3000
    assert scores["challenger_score"].null_count() == scores["champion_score"].null_count() == 0
    metrics = client.get_run(challenger["mlflow_run_id"]).data.metrics
    assert metrics["eval_champion_auc"] == pytest.approx(result["champion"]["metrics"]["auc"])
    assert metrics["eval_challenger_auc"] == pytest.approx(result["challenger"]["metrics"]["auc"])


def test_evaluate_with_incompatible_champion_does_not_crash(tmp_path, snapshot, mlflow_env):
    from mlflow import MlflowClient

    features, _ = snapshot
    legacy, _ = make_snapshot(tmp_path / "legacy", [*FEATURES[:4], "legacy_feature"], seed=2, rows=1000)
    champion = train(legacy, tmp_path / "t1", "churn-e", "run-e1", mlflow_env)
    MlflowClient().set_registered_model_alias("churn-e", "champion", champion["model_version"])
    challenger = train(features, tmp_path / "t2", "churn-e", "run-e2", mlflow_env)

    result = evaluate(features, tmp_path / "eval", "churn-e", challenger["model_version"])
    assert result["champion"]["version"] == "1"
    assert result["champion"]["comparable"] is False
    assert result["champion"]["metrics"] is None
    assert "legacy_feature" in result["champion"]["reason"]
    assert result["challenger"]["metrics"]["auc"] > 0.5


# --- scoring ------------------------------------------------------------------------------------------


def test_predict_uses_signature_columns_in_order(tmp_path, snapshot, mlflow_env):
    from trainer.predict import IncompatibleFeatures, predict

    features, _ = snapshot
    trained = train(features, tmp_path / "train", "churn-f", "run-f", mlflow_env)
    test = pl.read_parquet(
        storage.local_path(storage.join_uri(BuildManifest.read(features).snapshot_uri, "test.parquet"))
    )
    scores = predict(trained["model_uri"], test)
    assert scores.shape == (test.height,) and ((scores > 0) & (scores < 1)).all()
    shuffled = test.select(list(reversed(test.columns))).with_columns(pl.lit(1.0).alias("unrelated"))
    assert np.array_equal(predict(trained["model_uri"], shuffled.to_pandas()), scores)
    # directional: x0 raises the true churn logit, so shifting it up must raise the scores
    shifted = predict(trained["model_uri"], test.with_columns(pl.col("x0") + 1.0))
    assert shifted.mean() > scores.mean() + 0.05
    with pytest.raises(IncompatibleFeatures, match="x0"):
        predict(trained["model_uri"], test.drop("x0"))

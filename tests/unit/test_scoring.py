"""Batch scoring: no training/serving skew, stable A/B arms, the output gate, idempotent publishing."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
from features import synth
from features.engineering.scoring import build_scoring
from features.engineering.snapshot import build_features
from features.engineering.spec import load_spec
from features.errors import GateFailed, ScoringError
from features.extract.scoring import extract_scoring
from features.extract.training import extract
from features.gates.predictions import validate_predictions
from features.publish import publish_predictions
from mlcontract import storage
from mlcontract.manifests import (
    BuildManifest,
    ExtractManifest,
    GateManifest,
    PredictionsManifest,
    ScoreManifest,
    ScoringBuildManifest,
    ScoringExtractManifest,
    SnapshotManifest,
)
from mlcontract.source import ScoringSource
from polars.testing import assert_frame_equal
from test_trainer import mlflow_env  # noqa: F401 - the module's MLflow registry fixture
from trainer.score import ab_fraction, assign_arms

MODEL = "churn-test"


# ------------------------------------------------------------------------------ features: same as training


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring-warehouse")
    uri = f"sqlite:///{root / 'warehouse.db'}"
    config = synth.SynthConfig(customers=400, events_per_customer=20, days=120, snapshots=3, seed=5)
    synth.generate(config, uri)
    return uri, config


@pytest.fixture(scope="module")
def training_snapshot(warehouse, tmp_path_factory):
    uri, _ = warehouse
    root = tmp_path_factory.mktemp("training")
    extract(uri, str(root / "extract"))
    return build_features(str(root / "extract"), str(root / "build"), str(root / "features"))


def test_scoring_features_equal_training_features_for_the_same_entity_and_date(
    warehouse, training_snapshot, tmp_path
):
    uri, config = warehouse
    last_snapshot = config.snapshot_dates[-1]
    scoring = extract_scoring(uri, str(tmp_path / "extract"), last_snapshot)
    built = build_scoring(str(tmp_path / "extract"), str(tmp_path / "build"), training_snapshot.snapshot_uri)

    scored = pl.read_parquet(built.outputs["features"])
    trained = pl.read_parquet(storage.join_uri(training_snapshot.snapshot_uri, "test.parquet")).drop("label")
    assert built.feature_columns == training_snapshot.feature_columns
    # the training spec was inferred (no spec given): every aggregation kind it chose is compared below
    inferred = training_snapshot.feature_config["events"]
    assert inferred["amount"]["aggregations"] == ["sum", "mean", "min", "max", "std", "last"]
    assert inferred["channel"]["kind"] == "categorical" and "amount_last" in built.feature_columns
    assert scored.columns == trained.columns
    # the training labels hold the customers signed up before the snapshot: exactly the scoring spine
    assert scoring.rows["spine"] == trained.height
    assert_frame_equal(scored.sort("entity_id"), trained.sort("entity_id"))


def test_spine_has_entities_with_events_and_signed_up_ones_before_the_date(tmp_path):
    uri = f"sqlite:///{tmp_path / 'wh.db'}"
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE ev (cust TEXT, ts TIMESTAMP, amount REAL)"))
        conn.execute(sa.text("CREATE TABLE people (cust TEXT, joined TIMESTAMP, plan TEXT)"))
        conn.execute(sa.text(
            "INSERT INTO ev VALUES ('a', '2026-01-01 10:00:00', 1.0), ('x', '2026-01-02 00:00:00', 2.0),"
            " ('a', '2026-02-01 00:00:00', 3.0), ('late', '2026-02-05 00:00:00', 4.0)"
        ))
        conn.execute(sa.text(
            "INSERT INTO people VALUES ('a', '2025-12-01 00:00:00', 'basic'), ('quiet', '2025-06-01 00:00:00',"
            " 'pro'), ('new', '2026-02-01 00:00:00', 'basic')"
        ))
    engine.dispose()
    source = ScoringSource(events_table="ev", entities_table="people", entity_key="cust", timestamp_column="ts",
                           signup_column="joined")
    manifest = extract_scoring(uri, str(tmp_path / "out"), date(2026, 2, 1), source)

    spine = pl.read_parquet(manifest.outputs["spine"])
    # 'a' (both), 'quiet' (signed up, no events), 'x' (events only); not 'new' (signs up on the date),
    # not 'late' (first event after the date)
    assert spine["entity_id"].to_list() == ["a", "quiet", "x"]
    assert spine["snapshot_ts"].unique().to_list() == [datetime(2026, 2, 1)]
    events = pl.read_parquet(str(tmp_path / "out" / "events" / "*.parquet"))
    assert events["event_ts"].max() < datetime(2026, 2, 1), "events strictly before the scoring date"
    assert manifest.rows == {"events": 2, "entities": 3, "spine": 3}


def test_a_model_column_the_scoring_data_cannot_produce_is_an_error(warehouse, training_snapshot, tmp_path):
    uri, config = warehouse
    snapshot = SnapshotManifest.read(training_snapshot.snapshot_uri)
    reference = tmp_path / "reference"
    snapshot.model_copy(update={"feature_columns": [*snapshot.feature_columns, "plan_gold"]}).write(str(reference))
    extract_scoring(uri, str(tmp_path / "extract"), config.snapshot_dates[-1])
    with pytest.raises(ScoringError, match="plan_gold"):
        build_scoring(str(tmp_path / "extract"), str(tmp_path / "build"), str(reference))


def test_a_feature_table_is_encoded_at_scoring_with_the_training_spec_and_vocabulary(tmp_path):
    rng = np.random.default_rng(4)
    dates = [datetime(2026, 6, 1), datetime(2026, 7, 1), datetime(2026, 8, 1)]
    n = 300
    table = pl.DataFrame({
        "entity_id": [f"c{i:03d}" for _ in dates for i in range(n)],
        "snapshot_ts": [d for d in dates for _ in range(n)],
        "label": rng.integers(0, 2, n * len(dates)).astype(np.int8),
        "tenure_months": rng.integers(0, 60, n * len(dates)),
        "region": rng.choice(["north", "south", "east"], n * len(dates)).tolist(),
        "active": (rng.random(n * len(dates)) < 0.5).tolist(),
        "last_login": [d - timedelta(days=int(k)) for d, k in zip(
            [d for d in dates for _ in range(n)], rng.integers(0, 90, n * len(dates)), strict=True)],
        "note": [f"free text {i}" for i in range(n * len(dates))],  # unique per row: an id, ignored
    }, schema_overrides={"snapshot_ts": pl.Datetime("us"), "last_login": pl.Datetime("us")})
    extract_dir = tmp_path / "extract"
    extract_dir.mkdir()
    table.write_parquet(extract_dir / "labels.parquet")
    columns = {"entity_id": "customer", "snapshot_ts": "as_of_date", "label": "bought"}
    ExtractManifest(
        outputs={"labels": str(extract_dir / "labels.parquet")}, rows={"labels": table.height}, parts=0,
        content_hash=storage.hash_files([str(extract_dir / "labels.parquet")]), source={"test": True},
        snapshots=[d.isoformat() for d in dates], kind="feature_table", columns=columns,
    ).write(str(extract_dir))
    training = build_features(str(extract_dir), str(tmp_path / "build"), str(tmp_path / "features"))
    spec = training.feature_config
    assert {c: u["use"] for c, u in spec["table_columns"].items()} == {
        "tenure_months": "numeric", "region": "one_hot", "active": "boolean", "last_login": "days_since",
        "note": "ignore"}
    assert spec["events"] == {} and training.columns == columns
    assert training.feature_columns == ["tenure_months", "region_east", "region_north", "region_south", "active",
                                        "days_since_last_login"]
    # a user's spec for a feature table need not switch off the event defaults (windows, recency, tenure)
    given = load_spec('{"version": 1, "table_columns": {"region": {"use": "one_hot", "top_k": 2}}}')
    chosen = build_features(str(extract_dir), str(tmp_path / "build2"), str(tmp_path / "features"), given)
    assert len(chosen.feature_columns) == 2 and all(c.startswith("region_") for c in chosen.feature_columns)
    assert chosen.feature_config["windows_days"] == [] and not chosen.feature_config["recency"]

    # scoring the test date's rows (one region unseen in training: all-zero one-hots, never a new column)
    rows = table.filter(pl.col("snapshot_ts") == dates[-1]).drop("label")
    rows = rows.with_columns(region=pl.when(pl.col("entity_id") == "c000").then(pl.lit("mars")).otherwise("region"))
    scoring_dir = tmp_path / "scoring"
    scoring_dir.mkdir()
    rows.write_parquet(scoring_dir / "spine.parquet")
    ScoringExtractManifest(
        outputs={"spine": str(scoring_dir / "spine.parquet")}, rows={"spine": rows.height}, parts=0,
        content_hash="-", as_of=dates[-1].isoformat(), score_date=dates[-1].date().isoformat(), source={},
        snapshots=[dates[-1].isoformat()], kind="feature_table", columns={"entity_id": "customer"},
    ).write(str(scoring_dir))
    built = build_scoring(str(scoring_dir), str(tmp_path / "scored"), training.snapshot_uri)
    scored = pl.read_parquet(built.outputs["features"]).sort("entity_id")
    trained = pl.read_parquet(training.outputs["test"]).drop("label").sort("entity_id")
    assert scored.columns == trained.columns
    same = pl.col("entity_id") != "c000"
    assert_frame_equal(scored.filter(same), trained.filter(same))
    assert scored.filter(~same).select("region_east", "region_north", "region_south").row(0) == (0, 0, 0)


# --------------------------------------------------------------------------------------------------- A/B arms


def test_ab_assignment_is_stable_and_close_to_the_share():
    ids = [f"C{i:07d}" for i in range(10_000)]
    arms = assign_arms(ids, 0.2, salt=MODEL)
    assert abs(arms.mean() - 0.2) < 0.015
    # the same entity lands in the same arm whatever the day's order or company
    shuffled = list(reversed(ids))
    again = dict(zip(shuffled, assign_arms(shuffled, 0.2, salt=MODEL), strict=True))
    assert all(again[i] == a for i, a in zip(ids, arms, strict=True))
    assert ab_fraction("C0000042", MODEL) == ab_fraction("C0000042", MODEL)
    # a larger share only moves entities into the challenger arm, never out of it
    assert not (arms & ~assign_arms(ids, 0.3, salt=MODEL)).any()
    assert not assign_arms(ids, 0.0, salt=MODEL).any() and assign_arms(ids, 1.0, salt=MODEL).all()
    with pytest.raises(ValueError, match="share"):
        assign_arms(ids, 1.5, salt=MODEL)


# -------------------------------------------------------------------------------------------- output gate


def write_step(directory, name: str, frame: pl.DataFrame) -> str:
    """A score step's predictions, or an extract-scoring step's spine, with that step's manifest."""
    uri = storage.join_uri(str(directory), name)
    (directory).mkdir(parents=True, exist_ok=True)
    frame.write_parquet(uri)
    if name == "spine.parquet":
        ScoringExtractManifest(
            outputs={"spine": uri}, rows={"spine": frame.height}, parts=0, content_hash="-",
            as_of="2026-09-01T00:00:00", score_date="2026-09-01", source={}, snapshots=["2026-09-01T00:00:00"],
        ).write(str(directory))
    else:
        score_manifest({"predictions": uri}, frame.height).write(str(directory))
    return str(directory)


def score_manifest(outputs: dict[str, str], rows: int, score_date: str = "2026-09-01", run: str = "run-1"):
    return ScoreManifest(
        outputs=outputs, rows={"predictions": rows}, model_name=MODEL, alias="champion", model_version="3",
        versions={"champion": "3"}, ab_challenger_share=0.0, score_date=score_date, dag_run_id=run,
    )


def predictions_frame(n: int = 200, score_date: str = "2026-09-01", run: str = "run-1") -> pl.DataFrame:
    rng = np.random.default_rng(0)
    return pl.DataFrame({
        "entity_id": [f"C{i:05d}" for i in range(n)],
        "score_date": pl.Series([score_date] * n).str.to_date(),
        "score": rng.beta(2, 5, n),
        "predicted_class": ["0"] * n,
        "model_name": [MODEL] * n,
        "model_version": ["3"] * n,
        "alias": ["champion"] * n,
        "dag_run_id": [run] * n,
    })


@pytest.fixture
def spine_dir(tmp_path):
    spine = predictions_frame().select("entity_id", snapshot_ts=pl.lit(datetime(2026, 9, 1)))
    return write_step(tmp_path / "spine", "spine.parquet", spine)


def test_good_predictions_pass_the_output_gate(tmp_path, spine_dir):
    predictions = write_step(tmp_path / "score", "predictions.parquet", predictions_frame())
    manifest = validate_predictions(predictions, spine_dir, str(tmp_path / "gate"))
    assert manifest.success and manifest.failures == []
    assert storage.exists(manifest.results_uri)


def _with_row(frame: pl.DataFrame, row: int, **values) -> pl.DataFrame:
    return frame.with_columns(
        [pl.when(pl.int_range(pl.len()) == row).then(pl.lit(v)).otherwise(pl.col(c)).alias(c) for c, v in values.items()]
    )


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda f: _with_row(f, 1, entity_id="C00000"), ("expect_column_values_to_be_unique", "entity_id")),
        (lambda f: _with_row(f, 5, score=1.5), ("expect_column_values_to_be_between", "score")),
        (lambda f: _with_row(f, 5, score=None), ("expect_column_values_to_not_be_null", "score")),
        (lambda f: _with_row(f, 5, score=float("nan")), ("expect_column_values_to_not_be_null", "score")),
        (lambda f: f.slice(1), ("expect_table_row_count_to_equal", None)),
        (lambda f: _with_row(f, 3, entity_id="STRANGER"), ("expect_column_values_to_be_in_set", "entity_id")),
        (lambda f: f.with_columns(score=pl.lit(0.4)), ("expect_column_stdev_to_be_between", "score")),
        (lambda f: f.with_columns(score=pl.col("score") * 1e-4), ("expect_column_mean_to_be_between", "score")),
    ],
    ids=["duplicate", "above-one", "null", "nan", "missing-entity", "foreign-entity", "constant", "degenerate-mean"],
)
def test_bad_predictions_fail_the_output_gate_naming_the_expectation(tmp_path, spine_dir, corrupt, expected):
    predictions = write_step(tmp_path / "score", "predictions.parquet", corrupt(predictions_frame()))
    with pytest.raises(GateFailed) as failed:
        validate_predictions(predictions, spine_dir, str(tmp_path / "gate"))
    found = {(f.expectation, f.column) for f in failed.value.failures}
    assert expected in found, found
    assert expected[0] in str(failed.value)
    assert GateManifest.read(str(tmp_path / "gate")).success is False


def test_missing_entity_is_named_on_the_spine_side(tmp_path, spine_dir):
    predictions = write_step(tmp_path / "score", "predictions.parquet", predictions_frame().slice(1))
    with pytest.raises(GateFailed) as failed:
        validate_predictions(predictions, spine_dir, str(tmp_path / "gate"))
    spine_failure = next(f for f in failed.value.failures if f.dataset == "spine")
    assert spine_failure.expectation == "expect_column_values_to_be_in_set"
    assert "C00000" in spine_failure.observed["examples"]


# ----------------------------------------------------------------------------------------------- publishing


def scored_step(directory, frame: pl.DataFrame) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    predictions, features = str(directory / "predictions.parquet"), str(directory / "features.parquet")
    frame.write_parquet(predictions)
    frame.select("entity_id", f1=pl.col("score") * 2).write_parquet(features)
    outputs = {"predictions": predictions, "features": features}
    score_manifest(outputs, frame.height, frame["score_date"][0].isoformat(), frame["dag_run_id"][0]).write(
        str(directory)
    )
    return str(directory)


def count_rows(uri: str, table: str = "churn_predictions") -> dict:
    engine = sa.create_engine(uri)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            f"SELECT score_date, dag_run_id, COUNT(*) FROM {table} GROUP BY score_date, dag_run_id ORDER BY 1"
        )).fetchall()
    engine.dispose()
    return {(str(d), r): n for d, r, n in rows}


def _publish_twice(tmp_path, warehouse_uri: str) -> None:
    root = f"file://{tmp_path / 'artifacts'}"
    other_day = scored_step(tmp_path / "day0", predictions_frame(50, "2026-08-31", "run-0"))
    publish_predictions(other_day, str(tmp_path / "pub0"), warehouse_uri, root)
    first = publish_predictions(
        scored_step(tmp_path / "day1", predictions_frame(200, run="run-1")), str(tmp_path / "pub1"), warehouse_uri, root
    )
    assert first.rows == {"predictions": 200, "replaced": 0}
    second = publish_predictions(
        scored_step(tmp_path / "day1b", predictions_frame(200, run="run-2")), str(tmp_path / "pub2"), warehouse_uri, root
    )
    assert second.rows == {"predictions": 200, "replaced": 200}
    # the rerun replaced its date (same row count, its own run id), the other date is untouched
    assert count_rows(warehouse_uri) == {("2026-08-31", "run-0"): 50, ("2026-09-01", "run-2"): 200}
    published = tmp_path / "artifacts" / "predictions" / MODEL / "2026-09-01"
    assert pl.read_parquet(published / "predictions.parquet")["dag_run_id"].unique().to_list() == ["run-2"]
    assert (published / "features.parquet").exists()
    assert PredictionsManifest.read(str(published)).model_version == "3"


def test_publish_is_idempotent_per_date_on_sqlite(tmp_path):
    _publish_twice(tmp_path, f"sqlite:///{tmp_path / 'warehouse.db'}")


@pytest.mark.postgres
def test_publish_is_idempotent_per_date_on_postgresql(tmp_path, postgres_uri):
    _publish_twice(tmp_path, postgres_uri)


def test_publish_refuses_an_unsafe_table_name(tmp_path):
    step = scored_step(tmp_path / "day", predictions_frame(10))
    with pytest.raises(ScoringError, match="--table"):
        publish_predictions(step, str(tmp_path / "pub"), f"sqlite:///{tmp_path / 'w.db'}",
                            f"file://{tmp_path}", table="x; DROP TABLE y")


# ------------------------------------------------------------------------- score: champion and the A/B arm


def test_score_pins_the_champion_version_and_splits_the_ab_arm(tmp_path, mlflow_env, capsys):  # noqa: F811
    from mlflow import MlflowClient
    from test_trainer import make_snapshot, train
    from trainer.cli import main

    build_dir, _ = make_snapshot(tmp_path / "snap", [f"x{i}" for i in range(8)] + ["visits"])
    champion = train(build_dir, tmp_path / "t1", "churn-score", "run-s1", mlflow_env, seed=1)
    challenger = train(build_dir, tmp_path / "t2", "churn-score", "run-s2", mlflow_env, seed=2)
    MlflowClient().set_registered_model_alias("churn-score", "champion", champion["model_version"])
    snapshot_uri = BuildManifest.read(build_dir).snapshot_uri
    test_split = pl.read_parquet(storage.local_path(storage.join_uri(snapshot_uri, "test.parquet"))).drop("label")
    features_dir = tmp_path / "build_scoring"
    features_dir.mkdir()
    test_split.write_parquet(features_dir / "features.parquet")
    ScoringBuildManifest(
        outputs={"features": str(features_dir / "features.parquet")}, rows={"features": test_split.height},
        feature_columns=[c for c in test_split.columns if c not in ("entity_id", "snapshot_ts")],
        reference_snapshot_uri=snapshot_uri, feature_config_hash="-", extract="-", extract_content_hash="-",
        as_of="2026-09-01T00:00:00", score_date="2026-09-01", content_hash="-",
    ).write(str(features_dir))
    mlflow_env.setenv("PIPELINE_RUN_ID", "scheduled__2026-09-01")

    def score(out: str, *extra: str, exit_code: int = 0) -> ScoreManifest | None:
        assert main(["score", "--features", str(features_dir), "--model-name", "churn-score", "--out",
                     str(tmp_path / out), *extra]) == exit_code
        return ScoreManifest.read(str(tmp_path / out)) if exit_code == 0 else None

    manifest = score("ab", "--expect-version", champion["model_version"], "--ab-challenger-share", "0.3",
                     "--challenger-version", challenger["model_version"])
    predictions = pl.read_parquet(manifest.outputs["predictions"])
    assert predictions.columns == ["entity_id", "score_date", "score", "predicted_class", "model_name",
                                   "model_version", "alias", "dag_run_id"]
    assert predictions["predicted_class"].to_list() == ["1" if p >= 0.5 else "0" for p in predictions["score"]]
    assert predictions["score"].dtype == pl.Float64 and predictions.height == test_split.height
    arms = assign_arms(predictions["entity_id"], 0.3, salt="churn-score")
    assert (predictions["alias"] == "challenger").to_list() == arms.tolist()
    assert abs(arms.mean() - 0.3) < 0.1
    versions = dict(predictions.select("alias", "model_version").unique().iter_rows())
    assert versions == {"champion": champion["model_version"], "challenger": challenger["model_version"]}
    assert manifest.model_version == champion["model_version"]
    assert predictions["dag_run_id"].unique().to_list() == ["scheduled__2026-09-01"]

    only_champion = pl.read_parquet(score("full").outputs["predictions"])
    assert only_champion["alias"].unique().to_list() == ["champion"]
    champion_rows = ~pl.Series(arms)
    assert only_champion.filter(champion_rows)["score"].to_list() == predictions.filter(champion_rows)["score"].to_list()

    capsys.readouterr()
    score("moved", "--expect-version", challenger["model_version"], exit_code=1)
    assert "alias moved" in capsys.readouterr().err
    assert main(["score", "--features", str(features_dir), "--model-name", "no-such-model", "--out",
                 str(tmp_path / "x")]) == 1
    assert "no @champion" in capsys.readouterr().err

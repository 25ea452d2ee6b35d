"""The synthetic warehouse: deterministic, realistic label rate, oracle AUC, chunked, replaceable."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
from features import synth, synth_shapes
from features.errors import SeedError

SMALL = {"customers": 3_000, "events_per_customer": 30.0}


def _collect(config: synth.SynthConfig) -> dict[str, pl.DataFrame]:
    chunks = list(synth.iter_chunks(config))
    return {
        "customers": pl.concat([c.customers for c in chunks]),
        "events": pl.concat([c.events for c in chunks]),
        "labels": pl.concat([c.labels for c in chunks]),
        "p": np.concatenate([c.p_true for c in chunks]),
        "chunks": len(chunks),
    }


def test_same_seed_same_data_different_seed_different_data():
    first = _collect(synth.SynthConfig(**SMALL, seed=7))
    again = _collect(synth.SynthConfig(**SMALL, seed=7))
    other = _collect(synth.SynthConfig(**SMALL, seed=8))
    for table in ("customers", "events", "labels"):
        assert first[table].equals(again[table]), table
    assert not first["events"].equals(other["events"])
    assert not first["labels"].equals(other["labels"])


def test_label_rate_and_oracle_auc_in_range():
    data = _collect(synth.SynthConfig(customers=10_000))
    y = data["labels"]["churned"].to_numpy()
    assert 0.10 <= y.mean() <= 0.30
    assert 0.80 <= synth.auc(data["p"], y) <= 0.92


def test_auc_matches_definition():
    assert synth.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert synth.auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # ties count half
    assert np.isnan(synth.auc(np.array([0.2, 0.3]), np.array([1, 1])))


def test_labels_only_after_signup_and_features_only_from_the_past():
    config = synth.SynthConfig(**SMALL)
    data = _collect(config)
    joined = data["labels"].join(data["customers"], on="customer_id")
    assert joined.height == data["labels"].height
    assert (joined["signup_ts"] < joined["snapshot_ts"]).all()
    snapshots = sorted(data["labels"]["snapshot_ts"].unique().to_list())
    assert snapshots == config.snapshot_dates
    assert snapshots[-1] == config.end - __import__("datetime").timedelta(days=config.label_horizon_days)
    events = data["events"]
    assert events["event_ts"].min() >= config.start and events["event_ts"].max() < config.end
    assert (events.filter(pl.col("event_type") != "purchase")["amount"] == 0).all()
    assert (events.filter(pl.col("event_type") == "purchase")["amount"] > 0).all()
    first_event = (
        events.group_by("customer_id").agg(pl.col("event_ts").min()).join(data["customers"], on="customer_id")
    )
    assert (first_event["event_ts"] >= first_event["signup_ts"]).all()


def test_chunked_generation_covers_every_customer_once():
    config = synth.SynthConfig(customers=5_000, chunk_customers=1_200)
    data = _collect(config)
    assert data["chunks"] == 5
    assert data["customers"]["customer_id"].n_unique() == 5_000
    # the mean events per customer matches the knob (scaled per chunk)
    assert data["events"].height / 5_000 == pytest.approx(config.events_per_customer, rel=0.05)
    largest = max(c.events.height for c in synth.iter_chunks(config))
    assert largest < 1_200 * config.events_per_customer * 1.5  # memory is bounded by the chunk size


def test_drift_shifts_only_the_most_recent_events():
    base = _collect(synth.SynthConfig(**SMALL, drift=0.0))["events"]
    drifted = _collect(synth.SynthConfig(**SMALL, drift=1.0))["events"]
    recent_from = synth.SynthConfig().end - __import__("datetime").timedelta(
        days=synth.SynthConfig().label_horizon_days
    )

    def recent(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(pl.col("event_ts") >= recent_from)

    assert recent(drifted).height < 0.8 * recent(base).height
    app_share = lambda f: (recent(f)["channel"] == "app").mean()
    assert app_share(drifted) > app_share(base) + 0.1
    purchases = lambda f: recent(f).filter(pl.col("event_type") == "purchase")["amount"].mean()
    assert purchases(drifted) > 1.5 * purchases(base)
    older = lambda f: f.filter(pl.col("event_ts") < recent_from)
    assert older(drifted).equals(older(base))  # training data is untouched by drift
    assert _collect(synth.SynthConfig(**SMALL, drift=1.0))["labels"].equals(
        _collect(synth.SynthConfig(**SMALL))["labels"]
    )


def test_generate_writes_tables_and_replaces_on_rerun(tmp_path):
    uri = f"sqlite:///{tmp_path / 'wh.db'}"
    config = synth.SynthConfig(customers=800)
    report = synth.generate(config, uri)
    again = synth.generate(config, uri)
    assert report.rows == again.rows and report.oracle_auc == again.oracle_auc
    engine = sa.create_engine(uri)
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in report.rows}
        meta = dict(conn.execute(sa.text("SELECT key, value FROM dataset_meta")).all())
        first = conn.execute(
            sa.text("SELECT customer_id, event_ts FROM events ORDER BY customer_id, event_ts")
        ).first()
    assert counts == report.rows  # replaced, not appended
    assert float(meta["oracle_auc"]) == report.oracle_auc and meta["seed"] == "42"
    assert set(__import__("json").loads(meta["oracle_auc_by_snapshot"])) == {
        d.date().isoformat() for d in config.snapshot_dates
    }
    assert first[0] == "C00000000"


def test_bad_config_is_rejected():
    with pytest.raises(SeedError, match="drift"):
        synth.SynthConfig(drift=2.0)
    with pytest.raises(SeedError, match="too short"):
        synth.SynthConfig(days=60)


# --- the other shapes ---------------------------------------------------------------------------------------

SHAPE_TABLES = {
    "retail": {
        "transactions": ["client_ref", "purchased_at", "items", "amount_usd", "used_coupon", "store_code"],
        "churn_at_cutoff": ["client_ref", "cutoff_ts", "churned"],
    },
    "feature-table": {
        "customer_features": [
            "account_id",
            "seats",
            "monthly_spend_usd",
            "logins_30d",
            "support_tickets_90d",
            "has_sso",
            "plan_tier",
            "industry",
            "signup_at",
            "last_login_at",
            "will_upgrade",
        ],
    },
    "multiclass": {
        "orders": ["shopper_id", "ordered_at", "category", "basket_value", "via_app"],
        "next_category": ["shopper_id", "as_of", "next_category"],
    },
    "regression": {
        "payments": ["member_no", "paid_at", "amount_eur", "method", "promo"],
        "spend_next_90d": ["member_no", "as_of", "spend_next_90d"],
    },
}
# the oracle metric each shape is tuned to, with a margin for the small test sizes
ORACLE_RANGE = {
    "retail": ("auc", 0.78, 0.90),
    "feature-table": ("auc", 0.74, 0.86),
    "multiclass": ("accuracy", 0.55, 0.78),
    "regression": ("r2", 0.55, 0.80),
}


def _shape(shape: str, **options) -> tuple[synth_shapes.ShapeData, synth_shapes.ShapeReport]:
    config = synth_shapes.ShapeConfig(shape=shape, customers=options.pop("customers", 3_000), **options)
    data = synth_shapes.make(config)
    return data, synth_shapes.report_for(data, config)


@pytest.mark.parametrize("shape", sorted(SHAPE_TABLES))
def test_shape_tables_names_determinism_and_oracle(shape):
    data, report = _shape(shape)
    assert {name: frame.columns for name, frame in data.tables.items()} == SHAPE_TABLES[shape]
    again, _ = _shape(shape)
    other, _ = _shape(shape, seed=43)
    for name, frame in data.tables.items():
        assert frame.equals(again.tables[name]), name
        assert not frame.equals(other.tables[name]), name
    metric, low, high = ORACLE_RANGE[shape]
    assert low <= report.oracle[metric] <= high, report.oracle
    assert report.rows == {name: frame.height for name, frame in data.tables.items()}
    source = data.source
    label_table = data.tables[source.labels_table or source.features_table]
    assert source.label_column in label_table.columns and source.entity_key in label_table.columns
    for table in (source.events_table, source.labels_table):
        if table:
            assert data.tables[table][source.entity_key].null_count() == 0


def test_shapes_do_not_share_random_streams():
    retail, _ = _shape("retail")
    regression, _ = _shape("regression")
    assert retail.tables["transactions"]["purchased_at"].head(50).to_list() != (
        regression.tables["payments"]["paid_at"].head(50).to_list()
    )


def test_retail_one_cutoff_and_monthly_cutoffs():
    data, report = _shape("retail")
    labels = data.tables["churn_at_cutoff"]
    assert labels["cutoff_ts"].unique().to_list() == [datetime(2026, 8, 1)]
    assert labels["client_ref"].is_unique().all()
    assert 0.15 <= report.label_summary["label_rate"] <= 0.40
    # one cutoff: the build splits by entity; the oracle is reported on the build's test entities
    test = synth_shapes.oracle_test_rows(data)
    assert test.height == pytest.approx(0.15 * labels.height, rel=0.05)
    assert report.oracle_test == synth_shapes.oracle_metrics("binary", test, "churned")
    assert report.oracle_test != report.oracle
    transactions = data.tables["transactions"]
    assert transactions["store_code"].n_unique() > 200  # a high-cardinality string
    assert (transactions["items"] >= 1).all() and (transactions["amount_usd"] > 0).all()
    assert 0.05 < transactions["used_coupon"].mean() < 0.5

    four, report4 = _shape("retail", cutoffs=4)
    labels4 = four.tables["churn_at_cutoff"]
    cutoffs = sorted(labels4["cutoff_ts"].unique().to_list())
    assert cutoffs == [datetime(2026, m, 1) for m in (5, 6, 7, 8)]
    assert set(report4.oracle_by_snapshot) == {c.date().isoformat() for c in cutoffs}
    assert report4.oracle_test == report4.oracle_by_snapshot["2026-08-01"]  # time split: the latest cutoff
    # a churned client buys nothing after its cutoff and is not labelled again
    churned = labels4.filter(pl.col("churned") == 1).select("client_ref", churned_at="cutoff_ts")
    assert churned["client_ref"].is_unique().all()
    later = (
        four.tables["transactions"]
        .join(churned, on="client_ref")
        .filter(pl.col("purchased_at") >= pl.col("churned_at"))
    )
    assert later.height == 0
    relabelled = labels4.join(churned, on="client_ref").filter(pl.col("cutoff_ts") > pl.col("churned_at"))
    assert relabelled.height == 0
    # every labelled client bought something before its cutoff
    first = four.tables["transactions"].group_by("client_ref").agg(pl.col("purchased_at").min())
    joined = labels4.join(first, on="client_ref", how="left")
    assert (joined["purchased_at"] < joined["cutoff_ts"]).all()


def test_feature_table_rows_per_account_and_snapshot():
    data, _ = _shape("feature-table")
    table = data.tables["customer_features"]
    assert table["account_id"].is_unique().all() and "as_of" not in table.columns
    assert data.source.snapshot_column is None and data.source.features_table == "customer_features"
    assert table["last_login_at"].null_count() > 0  # nullable timestamps, as real tables have
    assert (table["last_login_at"].drop_nulls() <= datetime(2026, 8, 1)).all()
    assert set(table["plan_tier"].unique()) == set(synth_shapes.PLAN_TIERS)
    snapshots, report = _shape("feature-table", cutoffs=3, customers=1_000)
    table = snapshots.tables["customer_features"]
    assert table.height == 3_000 and table.select("account_id", "as_of").is_unique().all()
    assert snapshots.source.snapshot_column == "as_of" and len(report.oracle_by_snapshot) == 3


def test_multiclass_labels_are_class_names_with_true_probabilities():
    data, report = _shape("multiclass")
    labels = data.tables["next_category"]
    assert set(labels["next_category"].unique()) == set(synth_shapes.CATEGORIES)
    p = data.truth.select(f"p_{c}" for c in synth_shapes.CATEGORIES).to_numpy()
    assert np.allclose(p.sum(axis=1), 1.0)
    assert report.task == "multiclass" and report.label_summary["classes"] == list(synth_shapes.CATEGORIES)
    prior = max(report.label_summary["class_shares"].values())
    assert report.oracle["accuracy"] > prior + 0.1  # the history tells much more than the majority class
    assert (
        len(report.oracle_by_snapshot) == 4 and report.oracle_test == report.oracle_by_snapshot["2026-08-01"]
    )


def test_regression_target_is_a_non_negative_amount_around_its_expectation():
    data, report = _shape("regression")
    y = data.truth["spend_next_90d"].to_numpy()
    assert (y >= 0).all() and data.tables["spend_next_90d"]["spend_next_90d"].dtype == pl.Float64
    assert data.truth["expected"].mean() == pytest.approx(y.mean(), rel=0.1)
    assert report.oracle["rmse"] > 0 and report.label_summary["label_mean"] > 0


def test_oracle_metrics_match_their_definitions():
    truth = pl.DataFrame({"y": [0, 0, 1, 1], "p_true": [0.1, 0.4, 0.35, 0.8]})
    assert synth_shapes.oracle_metrics("binary", truth, "y") == {"auc": 0.75}
    truth = pl.DataFrame({"y": ["a", "b", "b"], "p_a": [0.7, 0.6, 0.2], "p_b": [0.3, 0.4, 0.8]})
    metrics = synth_shapes.oracle_metrics("multiclass", truth, "y", ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(2 / 3, abs=1e-5)
    assert metrics["log_loss"] == pytest.approx(-(np.log(0.7) + np.log(0.4) + np.log(0.8)) / 3, abs=1e-5)
    truth = pl.DataFrame({"y": [1.0, 2.0, 3.0], "expected": [1.0, 2.0, 4.0]})
    assert synth_shapes.oracle_metrics("regression", truth, "y") == {
        "r2": 0.5,
        "rmse": round(np.sqrt(1 / 3), 5),
    }


def test_seed_cli_writes_the_shape_and_its_report(tmp_path):
    from features.cli import commands
    from mlcontract.cli import run
    from mlcontract.manifests import SeedManifest

    uri = f"sqlite:///{tmp_path / 'wh.db'}"
    out = tmp_path / "seed"
    code = run(
        commands(),
        [
            "seed",
            "--shape",
            "retail",
            "--customers",
            "500",
            "--cutoffs",
            "4",
            "--warehouse-uri",
            uri,
            "--out",
            str(out),
        ],
    )
    assert code == 0
    report = SeedManifest.read(str(out)).report
    assert report["shape"] == "retail" and report["config"]["cutoffs"] == 4
    engine = sa.create_engine(uri)
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in report["rows"]}
        meta = dict(conn.execute(sa.text("SELECT key, value FROM dataset_meta")).all())
        coupon = conn.execute(sa.text("SELECT DISTINCT used_coupon FROM transactions")).scalars().all()
    assert counts == report["rows"]
    assert meta["shape"] == "retail" and float(meta["oracle_auc"]) == report["oracle_test"]["auc"]
    assert __import__("json").loads(meta["source"])["labels_table"] == "churn_at_cutoff"
    assert sorted(coupon) == [0, 1]  # a boolean column (SQLite stores 0/1)
    assert run(commands(), ["seed", "--cutoffs", "2", "--warehouse-uri", uri]) == 1  # demo takes --snapshots
    assert run(commands(), ["seed", "--shape", "retail", "--days", "60", "--warehouse-uri", uri]) == 1


def test_seed_cli_takes_every_shape():
    from features.cli import commands

    parser = commands().parser
    for shape in synth_shapes.SHAPES:
        assert parser.parse_args(["seed", "--shape", shape]).shape == shape
    with pytest.raises(SystemExit):
        parser.parse_args(["seed", "--shape", "nope"])

"""The synthetic warehouse: deterministic, realistic label rate, oracle AUC, chunked, replaceable."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
from features import synth
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

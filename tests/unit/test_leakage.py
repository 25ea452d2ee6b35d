"""Point-in-time correctness for every aggregation kind of the feature spec.

For each kind: an event at or after the snapshot instant (with extreme or new values) never changes any
feature, and a window leaves out the events older than its start.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from features.engineering.compute import compute_features, fit_categories
from features.engineering.spec import parse_spec

D = datetime
SNAPSHOTS = [D(2024, 3, 1), D(2024, 4, 1), D(2024, 5, 1)]
START = D(2023, 11, 1)

# one spec per aggregation kind, so a leak is pinned to the kind that has it
KINDS = {
    "count": {"channel": {"kind": "categorical", "aggregations": ["count"]}},
    "share": {"channel": {"kind": "categorical", "aggregations": ["share"]}},
    "sum": {"amount": {"kind": "numeric", "aggregations": ["sum"]}},
    "mean": {"amount": {"kind": "numeric", "aggregations": ["mean"]}},
    "min": {"amount": {"kind": "numeric", "aggregations": ["min"]}},
    "max": {"amount": {"kind": "numeric", "aggregations": ["max"]}},
    "std": {"amount": {"kind": "numeric", "aggregations": ["std"]}},
    "last": {"amount": {"kind": "numeric", "aggregations": ["last"]}},
    "distinct_count": {"sku": {"kind": "high_cardinality"}},
    "categorical_distinct": {"channel": {"kind": "categorical", "aggregations": ["distinct_count"]}},
    "boolean": {"promo": {"kind": "boolean", "aggregations": ["sum", "mean"]}},
    "timestamp_lag": {"shipped_ts": {"kind": "timestamp", "aggregations": ["sum", "mean", "min", "max", "std", "last"]}},
    "recency_tenure_ratios": {"amount": {"kind": "numeric", "aggregations": ["sum"]}},
}


def spec_for(kind: str):
    return parse_spec({
        "windows_days": [7, 30, 90],
        "ratios": [[30, 90]] if kind == "recency_tenure_ratios" else [],
        "recency": kind == "recency_tenure_ratios",
        "tenure": kind == "recency_tenure_ratios",
        "events": KINDS[kind],
    })


def data(seed: int = 3, entities: int = 12, n: int = 900) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, int((D(2024, 6, 1) - START).total_seconds()), n)
    times = [START + timedelta(seconds=int(s)) for s in seconds]
    events = pl.DataFrame({
        "entity_id": [f"e{i:02d}" for i in rng.integers(0, entities, n)],
        "event_ts": times,
        "amount": np.round(rng.gamma(2.0, 20.0, n), 2),
        "channel": rng.choice(["web", "app", "store"], n).tolist(),
        "sku": [f"s{k}" for k in rng.integers(0, 60, n)],
        "promo": (rng.random(n) < 0.3).tolist(),
        "shipped_ts": [t - timedelta(hours=int(h)) for t, h in zip(times, rng.integers(1, 200, n), strict=True)],
    }, schema_overrides={"event_ts": pl.Datetime("us"), "shipped_ts": pl.Datetime("us")})
    # ties: events of one entity at the same instant, one of them exactly at a snapshot
    ties = events.head(6).with_columns(entity_id=pl.lit("e00"), event_ts=pl.lit(D(2024, 3, 20), pl.Datetime("us")))
    at_snapshot = events.head(3).with_columns(event_ts=pl.lit(SNAPSHOTS[1], pl.Datetime("us")))
    spine = pl.DataFrame(
        {"entity_id": [f"e{i:02d}" for _ in SNAPSHOTS for i in range(entities + 1)],
         "snapshot_ts": [s for s in SNAPSHOTS for _ in range(entities + 1)]},
        schema_overrides={"snapshot_ts": pl.Datetime("us")},
    )
    return pl.concat([events, ties, at_snapshot]), spine


def features(kind: str, events: pl.DataFrame, spine: pl.DataFrame, categories) -> pl.DataFrame:
    return compute_features(events.lazy(), spine.lazy(), None, spec_for(kind), categories).collect()


@pytest.mark.parametrize("kind", list(KINDS))
def test_events_at_or_after_the_snapshot_change_nothing(kind):
    events, spine = data()
    categories = fit_categories(events.lazy(), None, spec_for(kind), before=SNAPSHOTS[-1])
    baseline = features(kind, events, spine, categories)
    assert len(baseline.columns) > 2
    for s in SNAPSHOTS:
        rows = spine.filter(pl.col("snapshot_ts") == s)
        expected = baseline.filter(pl.col("snapshot_ts") == s)
        past = features(kind, events.filter(pl.col("event_ts") < s), rows, categories)
        assert past.equals(expected), f"{kind}: features at {s} depend on events at or after it"
        future = events.sample(200, seed=7).with_columns(
            event_ts=pl.lit(s) + pl.duration(hours=pl.int_range(0, 200) * 5),
            amount=pl.lit(1e6),
            channel=pl.lit("web"),
            sku=pl.format("new{}", pl.int_range(0, 200)),
            promo=pl.lit(True),
            shipped_ts=pl.lit(D(2020, 1, 1), pl.Datetime("us")),
        )
        future = pl.concat([future, future.head(20).with_columns(event_ts=pl.lit(s, pl.Datetime("us")))])
        augmented = features(kind, pl.concat([events, future]), rows, categories)
        assert augmented.equals(expected), f"{kind}: events at or after {s} leaked into its features"


@pytest.mark.parametrize("kind", list(KINDS))
def test_windows_leave_out_events_before_their_start(kind):
    events, spine = data()
    categories = fit_categories(events.lazy(), None, spec_for(kind), before=SNAPSHOTS[-1])
    s = SNAPSHOTS[1]
    rows = spine.filter(pl.col("snapshot_ts") == s)
    baseline = features(kind, events, rows, categories)
    # change every event older than the 90-day window: windowed features must not move
    old = pl.col("event_ts") < s - timedelta(days=90)
    changed = events.with_columns(
        amount=pl.when(old).then(pl.lit(-5e5)).otherwise("amount"),
        channel=pl.when(old).then(pl.lit("store")).otherwise("channel"),
        sku=pl.when(old).then(pl.lit("old")).otherwise("sku"),
        promo=pl.when(old).then(pl.lit(True)).otherwise("promo"),
        shipped_ts=pl.when(old).then(pl.lit(D(2000, 1, 1), pl.Datetime("us"))).otherwise("shipped_ts"),
    )
    moved = features(kind, changed, rows, categories)
    windowed = [c for c in baseline.columns if c.endswith(("_7d", "_30d", "_90d", "_60d"))]
    assert windowed, kind
    assert moved.select(windowed).equals(baseline.select(windowed)), kind


def test_hand_computed_values_of_each_aggregation():
    events = pl.DataFrame({
        "entity_id": ["a"] * 6,
        "event_ts": [D(2024, 3, 1), D(2024, 3, 20), D(2024, 3, 25), D(2024, 3, 25), D(2024, 3, 28), D(2024, 4, 1)],
        "amount": [100.0, 1.0, 2.0, 6.0, None, 50.0],
        "channel": ["web", "app", "web", "web", None, "app"],
        "promo": [True, False, True, None, True, True],
        "shipped_ts": [D(2024, 2, 29), D(2024, 3, 19), D(2024, 3, 23), D(2024, 3, 24), D(2024, 3, 26), D(2024, 3, 31)],
    }, schema_overrides={"event_ts": pl.Datetime("us"), "shipped_ts": pl.Datetime("us")})
    spine = pl.DataFrame({"entity_id": ["a"], "snapshot_ts": [D(2024, 4, 1)]},
                         schema_overrides={"snapshot_ts": pl.Datetime("us")})
    spec = parse_spec({
        "windows_days": [7, 30],
        "ratios": [[7, 30]],
        "events": {
            "amount": {"kind": "numeric", "aggregations": ["sum", "mean", "min", "max", "std", "last"]},
            "channel": {"kind": "categorical", "aggregations": ["count", "share", "distinct_count"]},
            "promo": {"kind": "boolean"},
            "shipped_ts": {"kind": "timestamp", "aggregations": ["mean", "max"]},
        },
    })
    categories = fit_categories(events.lazy(), None, spec, before=D(2024, 4, 1))
    row = compute_features(events.lazy(), spine.lazy(), None, spec, categories).collect().row(0, named=True)
    # 7-day window [Mar 25, Apr 1): Mar 25 (2.0, web), Mar 25 (6.0, web), Mar 28 (null, null)
    expected = {
        "events_7d": 3, "amount_sum_7d": 8.0, "amount_mean_7d": 4.0, "amount_min_7d": 2.0, "amount_max_7d": 6.0,
        "amount_std_7d": float(np.std([2.0, 6.0], ddof=1)),
        "channel_web_7d": 2, "channel_app_7d": 0, "channel_web_share_7d": 1.0, "channel_distinct_7d": 1,
        "promo_sum_7d": 2, "promo_mean_7d": 1.0,  # true on Mar 25 and Mar 28; Mar 25 (6.0) is null
        "shipped_ts_lag_days_mean_7d": (2 + 1 + 2) / 3, "shipped_ts_lag_days_max_7d": 2.0,
        # 30-day window [Mar 2, Apr 1): adds Mar 20 (1.0, app, false)
        "events_30d": 4, "amount_std_30d": float(np.std([1.0, 2.0, 6.0], ddof=1)),
        "channel_app_share_30d": 1 / 3, "channel_distinct_30d": 2, "promo_mean_30d": 2 / 3,
        "events_total": 5,
        # the latest non-null amount before Apr 1: Mar 25 has 2.0 and 6.0 at the same instant -> 6.0
        "amount_last": 6.0,
        "days_since_last_event": 4.0, "days_since_first_event": 31.0,
        "events_trend_7d_vs_prior_23d": (3 + 1) / (1 * 7 / 23 + 1),
        "amount_sum_trend_7d_vs_prior_23d": float(np.log1p(8.0) - np.log1p(1.0 * 7 / 23)),
    }
    assert {k: row[k] for k in expected} == pytest.approx(expected)


def test_nan_and_infinite_values_count_as_missing():
    base = D(2024, 1, 1)
    events = pl.DataFrame({
        "entity_id": ["a"] * 4,
        "event_ts": [base + timedelta(days=d) for d in range(4)],
        "amount": [1.0, float("nan"), float("inf"), 3.0],
    }, schema_overrides={"event_ts": pl.Datetime("us")})
    spine = pl.DataFrame({"entity_id": ["a"], "snapshot_ts": [base + timedelta(days=5)]},
                         schema_overrides={"snapshot_ts": pl.Datetime("us")})
    spec = parse_spec({"windows_days": [7], "events": {"amount": {"kind": "numeric"}}})
    row = compute_features(events.lazy(), spine.lazy(), None, spec, {}).collect().row(0, named=True)
    assert row["events_7d"] == 4 and row["amount_sum_7d"] == 4.0 and row["amount_mean_7d"] == 2.0
    assert row["amount_max_7d"] == 3.0 and row["amount_last"] == 3.0


def test_std_is_zero_below_two_values_and_exact_for_large_offsets():
    base = D(2024, 1, 1)
    events = pl.DataFrame({
        "entity_id": ["a", "b", "b", "b"],
        "event_ts": [base, base, base + timedelta(days=1), base + timedelta(days=2)],
        "amount": [5.0, 1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.3],  # a naive float sum of squares loses this spread
    }, schema_overrides={"event_ts": pl.Datetime("us")})
    spine = pl.DataFrame({"entity_id": ["a", "b"], "snapshot_ts": [base + timedelta(days=5)] * 2},
                         schema_overrides={"snapshot_ts": pl.Datetime("us")})
    spec = parse_spec({"windows_days": [7], "events": {"amount": {"kind": "numeric", "aggregations": ["std"]}}})
    out = compute_features(events.lazy(), spine.lazy(), None, spec, {}).collect()
    assert out["amount_std_7d"].to_list() == pytest.approx([0.0, 0.1], rel=1e-9)


def test_distinct_counts_match_a_direct_count():
    events, spine = data(seed=11, n=1500)
    spec = spec_for("distinct_count")
    out = compute_features(events.lazy(), spine.lazy(), None, spec, {}).collect()
    for w in spec.windows_days:
        expected = (
            spine.join(events, on="entity_id", how="left")
            .filter((pl.col("event_ts") < pl.col("snapshot_ts"))
                    & (pl.col("event_ts") >= pl.col("snapshot_ts") - timedelta(days=w)))
            .group_by("entity_id", "snapshot_ts")
            .agg(pl.col("sku").n_unique().alias("expected"))
        )
        got = out.join(expected, on=["entity_id", "snapshot_ts"], how="left").with_columns(
            pl.col("expected").fill_null(0))
        assert got[f"sku_distinct_{w}d"].to_list() == got["expected"].to_list(), w
        assert got["expected"].max() > 1

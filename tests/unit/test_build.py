"""Point-in-time feature engineering: hand-computed values, no leakage, time split, determinism, reuse."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from features.engineering import compute
from features.engineering.compute import (
    FEATURE_CODE_VERSION,
    NEVER_DAYS,
    compute_feature_parts,
    compute_features,
    feature_columns,
    fit_categories,
    range_max,
)
from features.engineering.snapshot import build_features
from features.engineering.spec import FeatureSpec, parse_spec
from features.engineering.split import split_dates
from features.errors import BuildError
from mlcontract import storage
from mlcontract.manifests import BuildManifest, ExtractManifest, SnapshotManifest

D = datetime
EVENT_SCHEMA = {
    "entity_id": pl.String,
    "event_ts": pl.Datetime("us"),
    "event_type": pl.String,
    "channel": pl.String,
    "amount": pl.Float64,
}
SPINE_SCHEMA = {"entity_id": pl.String, "snapshot_ts": pl.Datetime("us"), "label": pl.Int8}


def events_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def spine_frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SPINE_SCHEMA, orient="row")


# ------------------------------------------------------------------------------------- hand-computed example

HAND_EVENTS = events_frame(
    [
        ("a", D(2024, 1, 1), "x", "web", 1.0),
        ("a", D(2024, 3, 1), "y", "app", 2.0),
        ("a", D(2024, 3, 31), "x", "web", 3.0),
        ("a", D(2024, 4, 1), "x", "app", 100.0),  # exactly at the April snapshot: must not count there
        ("b", D(2024, 3, 31, 12), "x", "web", 5.0),
        ("b", D(2024, 5, 1), "y", "web", 7.0),  # after every snapshot
    ]
)
HAND_SPINE = spine_frame(
    [
        ("a", D(2024, 4, 1), 1),
        ("b", D(2024, 4, 1), 0),
        ("c", D(2024, 4, 1), 0),  # no history at all
        ("a", D(2024, 3, 1), 1),
    ]
)
HAND_ENTITIES = pl.DataFrame(
    {
        "entity_id": ["a", "b"],
        "signup_ts": [D(2023, 1, 1), None],
        "plan": ["pro", "basic"],
        "seats": [3, None],
    },
    schema_overrides={"signup_ts": pl.Datetime("us")},
)


# the demo's features before the spec existed (windows, amount sum/mean/max, category counts, trend)
DEMO_SPEC = parse_spec({
    "windows_days": [7, 30, 90],
    "ratios": [[30, 90]],
    "events": {
        "event_type": {"kind": "categorical", "aggregations": ["count"]},
        "channel": {"kind": "categorical", "aggregations": ["count"]},
        "amount": {"kind": "numeric", "aggregations": ["sum", "mean", "max"]},
    },
    "entity_attributes": {"signup_ts": {"use": "days_since"}, "plan": {"use": "one_hot"},
                          "seats": {"use": "numeric"}, "region": {"use": "one_hot"}},
})
ALL_AGGREGATIONS = parse_spec({
    **DEMO_SPEC.to_dict(),
    "events": {
        "event_type": {"kind": "categorical", "aggregations": ["count", "share", "distinct_count"]},
        "channel": {"kind": "high_cardinality"},
        "amount": {"kind": "numeric", "aggregations": ["sum", "mean", "min", "max", "std", "last"]},
    },
})


def hand_features(spec: FeatureSpec = DEMO_SPEC) -> pl.DataFrame:
    categories = fit_categories(HAND_EVENTS.lazy(), HAND_ENTITIES.lazy(), spec, before=D(2024, 4, 1))
    return compute_features(
        HAND_EVENTS.lazy(), HAND_SPINE.lazy(), HAND_ENTITIES.lazy(), spec, categories
    ).collect(engine="streaming")


def row(frame: pl.DataFrame, entity: str, snapshot: datetime) -> dict:
    match = frame.filter((pl.col("entity_id") == entity) & (pl.col("snapshot_ts") == snapshot))
    assert match.height == 1
    return match.row(0, named=True)


def test_categories_are_sorted_top_values_before_the_cutoff():
    top1 = DEMO_SPEC.model_dump()
    for column in ("event_type", "channel"):
        top1["events"][column]["top_k"] = 1
    categories = fit_categories(HAND_EVENTS.lazy(), None, parse_spec(top1), before=D(2024, 4, 1))
    # before the cutoff: x ×3, y ×1 ; web ×3, app ×1 → the most frequent one of each
    assert categories == {"event_type": ["x"], "channel": ["web"]}
    full = fit_categories(HAND_EVENTS.lazy(), HAND_ENTITIES.lazy(), DEMO_SPEC)
    assert full == {"event_type": ["x", "y"], "channel": ["app", "web"], "entity.plan": ["basic", "pro"]}


def test_hand_computed_values():
    frame = hand_features()
    assert frame.height == HAND_SPINE.height
    assert frame.select("snapshot_ts", "entity_id").rows() == sorted(
        HAND_SPINE.select("snapshot_ts", "entity_id").rows()
    )

    a_apr = row(frame, "a", D(2024, 4, 1))
    expected = {
        "label": 1,
        # [Mar 25, Apr 1): the Mar 31 event only; the Apr 1 event is at the snapshot, excluded
        "events_7d": 1,
        "amount_sum_7d": 3.0,
        "amount_mean_7d": 3.0,
        "amount_max_7d": 3.0,
        "event_type_x_7d": 1,
        "event_type_y_7d": 0,
        "channel_web_7d": 1,
        "channel_app_7d": 0,
        # [Mar 2, Apr 1): still only Mar 31 (Mar 1 is 31 days before)
        "events_30d": 1,
        # [Jan 2, Apr 1): Mar 1 and Mar 31
        "events_90d": 2,
        "amount_sum_90d": 5.0,
        "amount_mean_90d": 2.5,
        "amount_max_90d": 3.0,
        "event_type_x_90d": 1,
        "event_type_y_90d": 1,
        "channel_app_90d": 1,
        "channel_web_90d": 1,
        "events_total": 3,
        "days_since_last_event": 1.0,
        "days_since_first_event": 91.0,  # 2024 is a leap year: 31 + 29 + 31
        # (1 + 1) / (1 event in the prior 60 d scaled to 30 d = 0.5, + 1)
        "events_trend_30d_vs_prior_60d": 2.0 / 1.5,
        "days_since_signup": 456.0,
        "plan_basic": 0,
        "plan_pro": 1,
        "seats": 3.0,
    }
    assert {k: a_apr[k] for k in expected} == pytest.approx(expected)

    a_mar = row(frame, "a", D(2024, 3, 1))
    assert a_mar["events_7d"] == 0 and a_mar["events_30d"] == 0
    assert a_mar["events_90d"] == 1 and a_mar["amount_sum_90d"] == 1.0  # the Jan 1 event (Mar 1 is excluded)
    assert a_mar["events_total"] == 1
    assert a_mar["days_since_last_event"] == a_mar["days_since_first_event"] == 60.0
    assert a_mar["events_trend_30d_vs_prior_60d"] == pytest.approx(1.0 / 1.5)

    b_apr = row(frame, "b", D(2024, 4, 1))
    assert b_apr["events_7d"] == 1 and b_apr["amount_max_7d"] == 5.0 and b_apr["events_total"] == 1
    assert b_apr["days_since_last_event"] == 0.5  # fractional days
    assert b_apr["days_since_signup"] == 0.0 and b_apr["seats"] == 0.0 and b_apr["plan_basic"] == 1


def test_row_without_history_gets_documented_defaults():
    c = row(hand_features(), "c", D(2024, 4, 1))
    for name, value in c.items():
        if (
            name.startswith(("events_", "amount_", "event_type_", "channel_", "plan_"))
            and "trend" not in name
        ):
            assert value == 0, name
    assert c["days_since_last_event"] == NEVER_DAYS
    assert c["days_since_first_event"] == 0.0
    assert c["events_trend_30d_vs_prior_60d"] == 1.0
    assert c["days_since_signup"] == 0.0 and c["seats"] == 0.0


def test_empty_spine_keeps_the_schema():
    spec = ALL_AGGREGATIONS
    categories = fit_categories(HAND_EVENTS.lazy(), None, spec)
    empty = compute_features(
        HAND_EVENTS.lazy(), HAND_SPINE.clear().lazy(), None, spec, categories
    ).collect()
    full = compute_features(HAND_EVENTS.lazy(), HAND_SPINE.lazy(), None, spec, categories).collect()
    assert empty.height == 0
    assert feature_columns(empty) == feature_columns(full)


# ------------------------------------------------------------------------------------- synthetic extract

SNAPSHOTS = [D(2024, 3, 1), D(2024, 4, 1), D(2024, 5, 1), D(2024, 6, 1)]


def random_data(seed: int = 7, entities: int = 30, events: int = 1500) -> tuple[pl.DataFrame, ...]:
    rng = np.random.default_rng(seed)
    start = D(2023, 11, 1)
    seconds = rng.integers(0, int((D(2024, 7, 1) - start).total_seconds()), events)
    ids = [f"e{i:03d}" for i in rng.integers(0, entities, events)]
    ev = pl.DataFrame(
        {
            "entity_id": ids,
            "event_ts": [start + timedelta(seconds=int(s)) for s in seconds],
            "event_type": rng.choice(["login", "purchase", "support", "view"], events).tolist(),
            "channel": rng.choice(["app", "web", "email"], events).tolist(),
            "amount": np.round(rng.gamma(2.0, 20.0, events), 2),
        },
        schema=EVENT_SCHEMA,
    )
    # a few events exactly at the snapshot instants
    at = ev.head(len(SNAPSHOTS)).with_columns(event_ts=pl.Series(SNAPSHOTS, dtype=pl.Datetime("us")))
    ev = pl.concat([ev, at])
    spine = spine_frame(
        [(f"e{i:03d}", s, int(rng.random() < 0.3)) for s in SNAPSHOTS for i in range(entities + 2)]
    )  # two entities never have events
    ents = pl.DataFrame(
        {
            "entity_id": [f"e{i:03d}" for i in range(entities)],
            "signup_ts": [start - timedelta(days=int(d)) for d in rng.integers(0, 400, entities)],
            "plan": rng.choice(["basic", "pro", "team"], entities).tolist(),
            "region": rng.choice(["eu", "us"], entities).tolist(),
        },
        schema_overrides={"signup_ts": pl.Datetime("us")},
    )
    return ev, spine, ents


def write_extract(directory, ev: pl.DataFrame, spine: pl.DataFrame, ents: pl.DataFrame | None) -> str:
    os.makedirs(directory / "events", exist_ok=True)
    half = ev.height // 2
    files = []
    for index, part in enumerate([ev[:half], ev[half:]]):
        path = directory / "events" / f"part-{index:05d}.parquet"
        part.write_parquet(path)
        files.append(str(path))
    spine.write_parquet(directory / "labels.parquet")
    files.append(str(directory / "labels.parquet"))
    if ents is not None:
        ents.write_parquet(directory / "entities.parquet")
        files.append(str(directory / "entities.parquet"))
    dates = sorted({s.date().isoformat() for s in spine["snapshot_ts"].to_list()})
    outputs = {"events": str(directory / "events"), "labels": str(directory / "labels.parquet")}
    if ents is not None:
        outputs["entities"] = str(directory / "entities.parquet")
    ExtractManifest(
        outputs=outputs,
        rows={"events": ev.height, "labels": spine.height, "entities": 0 if ents is None else ents.height},
        parts=2,
        content_hash=storage.hash_files(files),
        cutoff=SNAPSHOTS[-1].isoformat(),
        source={"test": True},
        snapshots=dates,
    ).write(str(directory))
    return str(directory)


def features_for(ev: pl.DataFrame, spine: pl.DataFrame, ents, categories) -> pl.DataFrame:
    return compute_features(ev.lazy(), spine.lazy(), ents.lazy(), ALL_AGGREGATIONS, categories).collect()


def test_no_leakage_from_events_at_or_after_the_snapshot():
    ev, spine, ents = random_data()
    categories = fit_categories(ev.lazy(), ents.lazy(), ALL_AGGREGATIONS, before=SNAPSHOTS[-1])
    baseline = features_for(ev, spine, ents, categories)
    rng = np.random.default_rng(1)
    for s in SNAPSHOTS:
        rows_at_s = spine.filter(pl.col("snapshot_ts") == s)
        expected = baseline.filter(pl.col("snapshot_ts") == s)
        # 1) only the past: drop every event at or after s
        past_only = features_for(ev.filter(pl.col("event_ts") < s), rows_at_s, ents, categories)
        assert past_only.equals(expected), f"features at {s} depend on events at or after it"
        # 2) more future: add events at s and after it, for the same entities, with new extreme values
        future = ev.sample(300, seed=int(rng.integers(1 << 30))).with_columns(
            event_ts=pl.lit(s) + pl.duration(seconds=pl.int_range(0, 300) * 3_600),
            amount=pl.lit(1e6),
        )
        future = pl.concat([future, future.head(20).with_columns(event_ts=pl.lit(s, pl.Datetime("us")))])
        augmented = features_for(pl.concat([ev, future]), rows_at_s, ents, categories)
        assert augmented.equals(expected), f"events at or after {s} leaked into its features"


def test_events_after_the_cutoff_change_nothing(tmp_path):
    ev, spine, ents = random_data()
    late = ev.head(50).with_columns(event_ts=pl.col("event_ts") + timedelta(days=400))
    assert late["event_ts"].min() >= SNAPSHOTS[-1]
    first = build_features(
        write_extract(tmp_path / "x1", ev, spine, ents), str(tmp_path / "o1"), str(tmp_path / "s")
    )
    second = build_features(
        write_extract(tmp_path / "x2", pl.concat([ev, late]), spine, ents),
        str(tmp_path / "o2"),
        str(tmp_path / "s"),
    )
    assert first.snapshot_hash != second.snapshot_hash  # different extract content
    for split in ("train", "valid", "test"):
        a = pl.read_parquet(first.outputs[split])
        b = pl.read_parquet(second.outputs[split])
        assert a.equals(b), split


def test_build_writes_a_time_split_snapshot_without_nulls(tmp_path):
    ev, spine, ents = random_data()
    extract = write_extract(tmp_path / "extract", ev, spine, ents)
    manifest = build_features(extract, str(tmp_path / "out"), str(tmp_path / "snapshots"))

    assert manifest.step == "build" and manifest.reused is False
    assert manifest.snapshot_uri == storage.join_uri(str(tmp_path / "snapshots"), manifest.snapshot_hash)
    assert BuildManifest.read(str(tmp_path / "out")) == manifest
    snapshot = SnapshotManifest.read(manifest.snapshot_uri)
    for key in ("snapshot_hash", "feature_columns", "feature_bounds", "rows", "label_rate", "splits", "feature_config"):
        assert getattr(snapshot, key) == getattr(manifest, key)
    assert manifest.splits == {
        "train": ["2024-03-01", "2024-04-01"],
        "valid": ["2024-05-01"],
        "test": ["2024-06-01"],
    }

    frames = {split: pl.read_parquet(uri) for split, uri in manifest.outputs.items()}
    assert max(frames["train"]["snapshot_ts"]) < min(frames["valid"]["snapshot_ts"])
    assert max(frames["valid"]["snapshot_ts"]) < min(frames["test"]["snapshot_ts"])
    assert sum(f.height for f in frames.values()) == spine.height
    for split, frame in frames.items():
        assert frame.columns[:3] == ["entity_id", "snapshot_ts", "label"]
        assert frame.columns[3:] == manifest.feature_columns
        assert manifest.rows[split] == frame.height
        assert manifest.label_rate[split] == pytest.approx(frame["label"].mean())
        assert frame.null_count().sum_horizontal().item() == 0, split
        feats = frame.select(manifest.feature_columns)
        assert all(dtype.is_numeric() for dtype in feats.dtypes)
        assert not feats.select(pl.all().cast(pl.Float64).is_infinite().any()).row(0).count(True)
        # "days" features are never negative (no -1 sentinels: the features gate checks this)
        assert min(frame.select(pl.col("^days_since_.*$").min()).row(0)) >= 0
        assert frame.select("snapshot_ts", "entity_id").rows() == sorted(
            frame.select("snapshot_ts", "entity_id").rows()
        )
    assert not [p for p in os.listdir(tmp_path / "snapshots") if p.startswith(".")]  # no staging left


def test_same_inputs_give_the_same_hash_and_bytes(tmp_path):
    ev, spine, ents = random_data()
    first = build_features(
        write_extract(tmp_path / "a", ev, spine, ents), str(tmp_path / "o1"), str(tmp_path / "r1")
    )
    second = build_features(
        write_extract(tmp_path / "b", ev, spine, ents), str(tmp_path / "o2"), str(tmp_path / "r2")
    )
    assert first.snapshot_hash == second.snapshot_hash
    for split in ("train", "valid", "test"):
        with (
            open(storage.local_path(first.outputs[split]), "rb") as a,
            open(storage.local_path(second.outputs[split]), "rb") as b,
        ):
            assert a.read() == b.read(), split


def test_hash_depends_on_config_and_code_version(tmp_path):
    ev, spine, ents = random_data()
    extract = write_extract(tmp_path / "x", ev, spine, ents)
    default = build_features(extract, str(tmp_path / "o1"), str(tmp_path / "s"))
    other = build_features(
        extract, str(tmp_path / "o2"), str(tmp_path / "s"), parse_spec({**DEMO_SPEC.to_dict(), "windows_days": [14, 30, 90],
                                                                     "ratios": [], "entity_attributes": {}})
    )
    assert default.snapshot_hash != other.snapshot_hash
    assert "events_14d" in other.feature_columns and "events_7d" not in other.feature_columns
    assert FEATURE_CODE_VERSION


def test_second_build_reuses_the_snapshot(tmp_path):
    ev, spine, ents = random_data()
    extract = write_extract(tmp_path / "extract", ev, spine, ents)
    first = build_features(extract, str(tmp_path / "run1"), str(tmp_path / "snapshots"))
    train = storage.local_path(first.outputs["train"])
    before = train.stat().st_mtime_ns
    second = build_features(extract, str(tmp_path / "run2"), str(tmp_path / "snapshots"))
    assert second.reused is True
    assert second.snapshot_hash == first.snapshot_hash
    assert train.stat().st_mtime_ns == before
    assert second.model_dump(exclude={"reused", "seconds"}) == first.model_dump(exclude={"reused", "seconds"})


def test_a_snapshot_without_manifest_is_rebuilt(tmp_path):
    ev, spine, ents = random_data()
    extract = write_extract(tmp_path / "extract", ev, spine, ents)
    first = build_features(extract, str(tmp_path / "run1"), str(tmp_path / "snapshots"))
    os.remove(storage.local_path(storage.join_uri(first.snapshot_uri, "manifest.json")))  # as if the build died
    again = build_features(extract, str(tmp_path / "run2"), str(tmp_path / "snapshots"))
    assert again.reused is False and again.rows == first.rows


def test_build_without_entities(tmp_path):
    ev, spine, _ = random_data()
    manifest = build_features(
        write_extract(tmp_path / "x", ev, spine, None), str(tmp_path / "o"), str(tmp_path / "s")
    )
    assert "days_since_signup" not in manifest.feature_columns
    assert "events_total" in manifest.feature_columns


def test_a_time_split_of_fewer_than_three_snapshot_dates_is_a_clear_error(tmp_path):
    # (issue 8: with the default split "auto" two dates give an entity split; see test_split.py)
    ev, spine, ents = random_data()
    two = spine.filter(pl.col("snapshot_ts") >= SNAPSHOTS[-2])
    with pytest.raises(BuildError, match="at least 3"):
        build_features(write_extract(tmp_path / "x", ev, two, ents), str(tmp_path / "o"), str(tmp_path / "s"),
                       split="time")
    assert not storage.exists(str(tmp_path / "o" / "manifest.json"))


def test_range_max_matches_a_loop():
    rng = np.random.default_rng(3)
    values = rng.normal(size=200)
    values[rng.random(200) < 0.2] = np.nan
    lo = rng.integers(0, 201, 500)
    hi = np.minimum(lo + rng.integers(0, 12, 500), 200)
    expected = [
        np.nan if h <= l or np.isnan(values[l:h]).all() else np.nanmax(values[l:h]) for l, h in zip(lo, hi)
    ]
    np.testing.assert_array_equal(range_max(values, lo, hi), np.array(expected))


def test_split_dates():
    assert split_dates([3, 1, 2, 4, 4]) == {"train": [1, 2], "valid": [3], "test": [4]}
    with pytest.raises(BuildError):
        split_dates([1, 2])


def test_feature_bounds_are_declared_by_the_definitions_and_hold(tmp_path):
    ev, spine, ents = random_data()
    manifest = build_features(write_extract(tmp_path / "x", ev, spine, ents), str(tmp_path / "o"), str(tmp_path / "s"))
    bounds = manifest.feature_bounds
    assert list(bounds) == manifest.feature_columns
    assert bounds["events_7d"] == bounds["events_total"] == bounds["channel_app_30d"] == (0.0, None)
    assert bounds["days_since_last_event"] == bounds["days_since_signup"] == (0.0, None)
    assert bounds["plan_pro"] == bounds["region_eu"] == (0.0, 1.0)
    assert bounds["amount_sum_30d"] == bounds["amount_mean_30d"] == bounds["amount_max_30d"] == (None, None)
    low, high = bounds["events_trend_30d_vs_prior_60d"]
    assert 0.0 < low < 1e-300 and high is None
    for uri in manifest.outputs.values():
        frame = pl.read_parquet(uri)
        for column, (low, high) in bounds.items():
            assert low is None or frame[column].min() >= low, column
            assert high is None or frame[column].max() <= high, column


# ------------------------------------------------------------------------------------- bounded memory (issue 11)


@pytest.mark.parametrize("part_events", [1, 97, 700])
def test_the_build_in_parts_equals_the_one_shot_build(part_events, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the parts' working directory goes
    ev, spine, ents = random_data(entities=40, events=3000)
    ev = pl.concat([ev, ev.head(5).with_columns(entity_id=pl.lit("zz-not-in-spine"))])
    categories = fit_categories(ev.lazy(), ents.lazy(), ALL_AGGREGATIONS, before=SNAPSHOTS[-1])
    one_shot = features_for(ev, spine, ents, categories)
    with compute_feature_parts(ev.lazy(), spine.lazy(), ents.lazy(), ALL_AGGREGATIONS, categories,
                               part_events=part_events) as parts:
        assert len(parts.parts) == min(-(-ev.height // part_events), 42)  # 42 spine entities at most
        assert len(list(tmp_path.glob("feature-parts-*/features-*.parquet"))) == len(parts.parts)  # not in memory
        assert parts.collect().equals(one_shot)
        assert parts.feature_columns == feature_columns(one_shot)
        # read back in (snapshot_ts, entity_id) order, by condition, in frames of a bounded size
        march = pl.col("snapshot_ts").dt.date().is_in([SNAPSHOTS[1].date()])
        frames = list(parts.frames(march, chunk_rows=10))
        assert max(f.height for f in frames) < 10 + 42 and len(frames) > 1
        assert pl.concat(frames).equals(one_shot.filter(march))
        some = pl.col("entity_id").is_in(pl.Series(["e001", "e017", "e039", "e041"]).implode())
        assert pl.concat(list(parts.frames(some))).equals(one_shot.filter(some))
        nothing = list(parts.frames(pl.col("entity_id") == "nobody"))
        assert len(nothing) == 1 and nothing[0].height == 0 and nothing[0].schema == one_shot.schema
    assert not list(tmp_path.iterdir())  # the working directory is removed with the parts


def test_a_feature_table_in_parts_equals_the_one_shot_build():
    spine = random_data()[1].with_columns(
        seats=pl.int_range(0, pl.len()) % 7, plan=pl.lit("p") + (pl.int_range(0, pl.len()) % 3).cast(pl.String)
    )
    spec = parse_spec({"windows_days": [], "recency": False, "tenure": False,
                       "table_columns": {"seats": {"use": "numeric"}, "plan": {"use": "one_hot"}}})
    categories = fit_categories(None, None, spec, spine=spine.lazy())
    one_shot = compute_features(None, spine.lazy(), None, spec, categories).collect()
    with compute_feature_parts(None, spine.lazy(), None, spec, categories, part_rows=25) as parts:
        assert len(parts.parts) == -(-spine.height // 25)
        assert parts.collect().equals(one_shot)


@pytest.mark.parametrize("split", ["time", "entity"])
def test_a_build_in_parts_writes_the_same_snapshot(tmp_path, monkeypatch, split):
    ev, spine, ents = random_data()
    extract = write_extract(tmp_path / "x", ev, spine, ents)
    one_shot = build_features(extract, str(tmp_path / "o1"), str(tmp_path / "s1"), split=split)
    monkeypatch.setattr(compute, "PART_EVENTS", 200)  # about 8 parts of the 1,504 events
    seen = []  # the events and label rows each computation holds (what bounds the memory)

    def spy(events, spine, *args):
        seen.append((events.select(pl.len()).collect().item(), spine.select(pl.len()).collect().item()))
        return compute_features(events, spine, *args)

    monkeypatch.setattr(compute, "compute_features", spy)
    in_parts = build_features(extract, str(tmp_path / "o2"), str(tmp_path / "s2"), split=split)
    assert len(seen) == 8 and max(n for n, _ in seen) <= 2 * 200 and sum(r for _, r in seen) == spine.height
    assert in_parts.snapshot_hash == one_shot.snapshot_hash
    assert in_parts.model_dump(include={"rows", "label_rate", "splits", "feature_columns", "feature_bounds"}) == (
        one_shot.model_dump(include={"rows", "label_rate", "splits", "feature_columns", "feature_bounds"})
    )
    for name in ("train", "valid", "test"):
        assert pl.read_parquet(in_parts.outputs[name]).equals(pl.read_parquet(one_shot.outputs[name])), name

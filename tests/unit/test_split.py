"""Train/valid/test splits: the entity split is stable, seeded, stratified and disjoint; auto picks the method;
labels are encoded per task with errors naming the user's label column."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime

import numpy as np
import polars as pl
import pytest
from features.engineering.snapshot import build_features
from features.engineering.split import (
    check_split_classes,
    encode_labels,
    entity_hash,
    entity_splits,
    label_rate,
    resolve_split,
)
from features.errors import BuildError
from mlcontract.manifests import SnapshotManifest
from test_build import SNAPSHOTS, random_data, write_extract

D = datetime


def spine(entities: int = 2000, snapshots: int = 2, seed: int = 0, positive: float = 0.2) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "entity_id": [f"id-{i}" for _ in range(snapshots) for i in range(entities)],
        "snapshot_ts": [D(2024, 1 + s, 1) for s in range(snapshots) for _ in range(entities)],
        "label": (rng.random(entities * snapshots) < positive).astype(np.int8),
    })


def test_entity_hash_is_stable_across_processes_and_seeded():
    code = "from features.engineering.split import entity_hash; print(entity_hash('C0000042', 42))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == entity_hash("C0000042", 42)
    assert entity_hash("C0000042", 42) != entity_hash("C0000042", 43)


def test_entity_split_fractions_stratified_and_stable():
    frame = spine()
    first = entity_splits(frame, 42, "binary")
    again = entity_splits(frame.sample(fraction=1.0, shuffle=True, seed=3), 42, "binary")
    assert dict(first.iter_rows()) == dict(again.iter_rows())  # whatever the row order
    assert first["entity_id"].n_unique() == first.height  # one split per entity
    shares = first["__split"].value_counts(normalize=True)
    shares = dict(zip(shares["__split"], shares["proportion"], strict=True))
    assert shares == pytest.approx({"train": 0.70, "valid": 0.15, "test": 0.15}, abs=0.01)
    # stratified by the entity's latest label: each split has the positive rate of the whole
    latest = frame.filter(pl.col("snapshot_ts") == frame["snapshot_ts"].max()).join(first, on="entity_id")
    rates = latest.group_by("__split").agg(pl.col("label").mean())
    overall = latest["label"].mean()
    assert all(abs(rate - overall) < 0.01 for rate in rates["label"])
    other_seed = entity_splits(frame, 7, "binary")
    assert dict(other_seed.iter_rows()) != dict(first.iter_rows())


def test_regression_strata_are_label_quantiles():
    frame = spine().with_columns(label=pl.int_range(pl.len()).cast(pl.Float64))
    splits = entity_splits(frame, 1, "regression").join(
        frame.filter(pl.col("snapshot_ts") == frame["snapshot_ts"].max()), on="entity_id")
    means = dict(splits.group_by("__split").agg(pl.col("label").mean()).iter_rows())
    assert max(means.values()) - min(means.values()) < 0.05 * frame["label"].max()


def test_auto_is_time_from_three_snapshot_dates():
    assert resolve_split("auto", 3) == "time" and resolve_split("auto", 2) == "entity"
    assert resolve_split("auto", 1) == "entity" and resolve_split("time", 5) == "time"
    with pytest.raises(BuildError, match="--split"):
        resolve_split("random", 3)


def test_one_snapshot_builds_an_entity_split_with_disjoint_entities(tmp_path):
    ev, labels, ents = random_data(entities=200, events=6000)
    one = labels.filter(pl.col("snapshot_ts") == SNAPSHOTS[-1])
    manifest = build_features(write_extract(tmp_path / "x", ev, one, ents), str(tmp_path / "o"), str(tmp_path / "s"))
    assert manifest.split_method == "entity" and manifest.split_seed == 42
    frames = {name: pl.read_parquet(uri) for name, uri in manifest.outputs.items()}
    ids = {name: set(frame["entity_id"]) for name, frame in frames.items()}
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    assert sum(f.height for f in frames.values()) == one.height
    assert min(f.height for f in frames.values()) > 0
    assert SnapshotManifest.read(manifest.snapshot_uri).split_method == "entity"
    # the seed is part of the snapshot's identity; the same seed reuses it
    other = build_features(write_extract(tmp_path / "x", ev, one, ents), str(tmp_path / "o2"), str(tmp_path / "s"),
                           split_seed=7)
    assert other.snapshot_hash != manifest.snapshot_hash
    same = build_features(write_extract(tmp_path / "x", ev, one, ents), str(tmp_path / "o3"), str(tmp_path / "s"))
    assert same.reused and same.snapshot_hash == manifest.snapshot_hash


def test_multiclass_and_regression_labels(tmp_path):
    ev, labels, ents = random_data()
    tiers = labels.with_columns(label=pl.Series(["gold", "silver", "bronze"] * (labels.height // 3)
                                                + ["gold"] * (labels.height % 3)))
    manifest = build_features(write_extract(tmp_path / "m", ev, tiers, ents), str(tmp_path / "om"),
                              str(tmp_path / "s"), task="multiclass")
    assert manifest.task == "multiclass" and manifest.classes == ["bronze", "gold", "silver"]
    train = pl.read_parquet(manifest.outputs["train"])
    assert train["label"].dtype == pl.Int32 and set(train["label"]) <= {0, 1, 2}
    spend = labels.with_columns(label=pl.int_range(pl.len()).cast(pl.Float64) / 3)
    regression = build_features(write_extract(tmp_path / "r", ev, spend, ents), str(tmp_path / "or"),
                                str(tmp_path / "s"), task="regression")
    assert regression.task == "regression" and regression.classes is None
    assert pl.read_parquet(regression.outputs["test"])["label"].dtype == pl.Float64
    assert regression.label_rate["test"] == 0.0


@pytest.mark.parametrize(
    ("values", "task", "expected"),
    [
        ([0, 2, 1], "binary", "a binary task needs 0/1"),
        (["yes", "no"], "binary", "a binary task needs 0/1"),
        ([1, None], "binary", "null value"),
        ([1, 1], "multiclass", "at least 2 classes"),
        (["a", "b"], "regression", "numeric labels"),
        ([1.0, float("nan")], "regression", "finite"),
        # exactly the task's values: nothing is rounded or cast into a class
        ([0.0, 0.7, 1.0, 1.9], "binary", "found 2 other value(s) such as [0.7, 1.9] (Float64); nothing is rounded"),
        (["0", "1", "1.0", "yes"], "binary", "such as ['1.0', 'yes'] (String)"),
        ([1.0, 2.0, 2.5], "multiclass", "needs class labels (text, booleans or whole numbers), found 1 value(s) such "
                                        "as [2.5]"),
        ([True, False], "regression", "numeric labels, found Boolean"),
    ],
)
def test_bad_labels_name_the_users_label_column(values, task, expected):
    with pytest.raises(BuildError, match="churned_flag") as error:
        encode_labels(pl.Series(values), task, "churned_flag")
    assert expected in str(error.value)


def test_label_encoding_and_rates():
    encoded, classes = encode_labels(pl.Series([True, False, True]), "binary", "y")
    assert encoded.to_list() == [1, 0, 1] and classes is None and label_rate(encoded, "binary") == pytest.approx(2 / 3)
    assert encode_labels(pl.Series(["0", "1", "1"]), "binary", "y")[0].to_list() == [0, 1, 1]  # a TEXT 0/1 column
    encoded, classes = encode_labels(pl.Series([3, 1, 3, 3]), "multiclass", "y")
    assert classes == ["1", "3"] and encoded.to_list() == [1, 0, 1, 1]
    assert label_rate(encoded, "multiclass") == 0.75


def test_whole_floats_are_classes():
    encoded, classes = encode_labels(pl.Series([2.0, 1.0, 2.0]), "multiclass", "y")
    assert classes == ["1", "2"] and encoded.to_list() == [1, 0, 1]
    assert encode_labels(pl.Series([0.0, 1.0]), "binary", "y")[0].to_list() == [0, 1]


@pytest.mark.parametrize(
    ("task", "splits", "classes", "expected"),
    [
        ("binary", {"train": [0, 1], "valid": [1, 1], "test": [0, 1]}, None,
         "the valid split holds one class only (missing 0): a binary task needs both classes in valid. "
         "Class counts: train {'0': 1, '1': 1}; valid {'0': 0, '1': 2}; test {'0': 1, '1': 1}"),
        ("multiclass", {"train": [0, 1, 1], "valid": [0, 1], "test": [0, 2]}, ["a", "b", "c"],
         "the train split holds 2 of 3 classes (missing c): a multiclass task needs every class in train"),
        ("multiclass", {"train": [0, 1, 2], "valid": [0, 1], "test": [2, 2]}, ["a", "b", "c"],
         "the test split holds one class only (missing a, b): a multiclass task needs at least two classes in test"),
    ],
)
def test_every_split_holds_the_classes_its_task_needs(task, splits, classes, expected):
    labels = {name: pl.Series(values, dtype=pl.Int32) for name, values in splits.items()}
    with pytest.raises(BuildError, match="column churned") as error:
        check_split_classes(labels, task, "churned", classes)
    assert expected in str(error.value)
    check_split_classes({name: pl.Series([0, 1, 2], dtype=pl.Int32) for name in splits}, task, "churned",
                        classes or ["0", "1"])
    check_split_classes({name: pl.Series([0.5]) for name in splits}, "regression", "churned", None)

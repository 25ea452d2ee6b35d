"""Gate 2, ``validate-features``: every split of the feature snapshot is non-empty, complete, labelled as
its task stores labels, and every feature is finite and within the range the build step declared for it
(``feature_bounds`` of the :class:`~mlcontract.manifests.BuildManifest`).

Labels per task (the build manifest's ``task``): binary 0/1 with both classes in every split (an AUC needs
both); multiclass a class index 0..K-1 of the manifest's ``classes``; regression finite numbers. Failures
name the user's columns (the manifest's ``columns``)."""

from __future__ import annotations

import time

import polars as pl
from mlcontract import storage
from mlcontract.manifests import BuildManifest, GateManifest
from mlcontract.names import BINARY, ENTITY, LABEL, MULTICLASS, SNAPSHOT, SPLITS

from features.validation import rules as r
from features.validation.gx import prefetch_gx
from features.validation.measure import Dataset
from features.validation.run import run_gate


def validate_features(features_dir: str, out_dir: str, *, max_null_fraction: float = 0.0) -> GateManifest:
    """Gate 2 on a ``build`` step's output."""
    started = time.perf_counter()
    prefetch_gx()
    build = BuildManifest.read(features_dir)
    columns = build.feature_columns
    datasets = []
    for split in SPLITS:
        frame = storage.scan_parquet(storage.join_uri(build.snapshot_uri, f"{split}.parquet"))
        schema = frame.collect_schema()
        rules = [r.columns_present([ENTITY, SNAPSHOT, LABEL, *columns], schema), r.row_count(1)]
        rules += [r.not_null(c, schema[c]) for c in (ENTITY, LABEL) if c in schema]
        if LABEL in schema:
            rules += label_rules(build, split, schema[LABEL])
        if split in build.rows:
            rules.append(r.row_count(equal=build.rows[split]))
        for column in columns:
            if column not in schema:
                continue  # reported by the column-set rule
            rules.append(r.not_null(column, schema[column], mostly=1.0 - max_null_fraction))
            if schema[column].is_numeric():
                low, high = build.feature_bounds.get(column, (None, None))
                rules.append(r.finite_between(column, schema[column], low, high))
        datasets.append(Dataset(split, frame, schema, rules, build.columns))
    return run_gate(
        "validate-features", out_dir, datasets, started,
        input=features_dir, snapshot_uri=build.snapshot_uri, feature_columns=columns,
    )


def label_rules(build: BuildManifest, split: str, dtype: pl.DataType) -> list[r.Rule]:
    """How the build stores the label for its task."""
    label = f"{build.columns.get(LABEL, LABEL)} (label)"
    if not dtype.is_numeric():
        return [r.numeric_type(LABEL, dtype)]
    if build.task == BINARY:
        # 0/1 only, so a spread above zero means both classes are there
        both = r.stdev_between(LABEL, 0.0, strict_min=True)
        return [r.in_set(LABEL, [0, 1], dtype), both.explained(f"column {label} has one class only in {split}: "
                                                                f"an AUC needs both")]
    if build.task == MULTICLASS:
        k = len(build.classes or [])
        # train learns every class; valid and test need two at least for a log loss that compares anything
        needed = k if split == "train" else min(k, 2)
        return [
            r.in_set(LABEL, list(range(k)), dtype).explained(
                f"column {label} must be a class index 0..{k - 1} of the build's classes"
            ),
            r.distinct_count_between(LABEL, needed).explained(
                f"column {label} has {{observed}} of the {k} classes in {split}; task=multiclass needs "
                f"{'every class' if split == 'train' else 'at least two'} there"
            ),
        ]
    return [r.finite_between(LABEL, dtype, None, None).explained(f"column {label} must be finite")]

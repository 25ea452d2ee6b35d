"""Train/valid/test splits and label encoding of the training spine.

- ``time``: the latest snapshot date is test, the one before valid, all earlier ones train (needs at least
  ``MIN_TIME_SPLIT_SNAPSHOTS`` dates).
- ``entity``: each entity goes to one split, decided by a stable seeded hash of its id (``hashlib``
  BLAKE2b of ``"{seed}:{entity_id}"``; stable across processes, machines and library versions), stratified
  by label: within each stratum (binary/multiclass: the entity's label at its latest snapshot; regression:
  the quintile of that label among entities) entities are ordered by hash and the first 70 % go to train,
  the next 15 % to valid, the rest to test (position ``(i + 0.5) / n`` against 0.70 and 0.85). The same
  entity is never in two splits.
- ``auto``: ``time`` when the labels hold at least ``MIN_TIME_SPLIT_SNAPSHOTS`` snapshot dates, else ``entity``.

Labels per task, exactly (nothing is rounded or cast into a class): ``binary`` 0/1 numbers, booleans or a
text column spelling ``'0'``/``'1'``, stored as Int8; ``multiclass`` text, booleans or whole numbers, stored
as the class index (Int32) into ``classes`` (the distinct values as strings, sorted by value); ``regression``
finite numbers, stored as Float64. Nulls, and anything else, are errors naming the user's label column and
the offending values.

Every split must hold the classes its task needs (:func:`check_split_classes`): a binary task both classes
in train, valid and test (an AUC of one class is undefined); a multiclass task every class in train and at
least two in valid and test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from mlcontract.names import (
    AUTO_SPLIT,
    BINARY,
    ENTITY,
    ENTITY_SPLIT,
    LABEL,
    MIN_TIME_SPLIT_SNAPSHOTS,
    MULTICLASS,
    REGRESSION,
    SNAPSHOT,
    SPLIT_METHODS,
    SPLITS,
    TASKS,
    TIME_SPLIT,
)

from features.errors import BuildError

FRACTIONS = {"train": 0.70, "valid": 0.15, "test": 0.15}
REGRESSION_STRATA = 5
SPLIT_COLUMN = "__split"


def resolve_split(method: str, snapshot_dates: int) -> str:
    """``time`` or ``entity`` for the requested method (``auto`` decides by the number of snapshot dates)."""
    if method not in SPLIT_METHODS:
        raise BuildError(f"--split must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")
    if method == AUTO_SPLIT:
        return TIME_SPLIT if snapshot_dates >= MIN_TIME_SPLIT_SNAPSHOTS else ENTITY_SPLIT
    return method


def split_dates(snapshot_dates: Sequence[Any], snapshot_column: str = SNAPSHOT) -> dict[str, list[Any]]:
    """Time-based split: the latest snapshot date is test, the one before valid, all earlier ones train."""
    dates = sorted(set(snapshot_dates))
    if len(dates) < MIN_TIME_SPLIT_SNAPSHOTS:
        raise BuildError(
            f"labels: column {snapshot_column} (snapshot) holds {len(dates)} snapshot date(s) "
            f"{[str(d) for d in dates]}: a time-based train/valid/test split needs at least "
            f"{MIN_TIME_SPLIT_SNAPSHOTS} (extract more snapshots, or use --split entity / auto)"
        )
    return {"train": dates[:-2], "valid": [dates[-2]], "test": [dates[-1]]}


def entity_hash(entity_id: str, seed: int) -> int:
    """A stable 64-bit hash of an entity id for a seed (not Python's or polars' hash: those are not stable)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{entity_id}".encode(), digest_size=8).digest(), "big")


def entity_splits(spine: pl.DataFrame, seed: int, task: str) -> pl.DataFrame:
    """entity_id -> split (``train``/``valid``/``test``), stratified by the (encoded) label; see module doc."""
    latest = spine.sort(SNAPSHOT).group_by(ENTITY, maintain_order=True).agg(pl.col(LABEL).last())
    if task == REGRESSION:
        rank = pl.col(LABEL).rank("ordinal") - 1
        stratum = (rank * REGRESSION_STRATA // pl.len()).alias("stratum")
    else:
        stratum = pl.col(LABEL).alias("stratum")
    hashes = pl.Series("hash", [entity_hash(e, seed) for e in latest[ENTITY].to_list()], dtype=pl.UInt64)
    position = (pl.col("hash").rank("ordinal").over("stratum") - 0.5) / pl.len().over("stratum")
    train, valid = FRACTIONS["train"], FRACTIONS["train"] + FRACTIONS["valid"]
    return (
        latest.with_columns(stratum, hashes)
        .with_columns(position.alias("position"))
        .select(
            ENTITY,
            pl.when(pl.col("position") < train)
            .then(pl.lit("train"))
            .when(pl.col("position") < valid)
            .then(pl.lit("valid"))
            .otherwise(pl.lit("test"))
            .alias(SPLIT_COLUMN),
        )
    )


def check_splits(rows: dict[str, int], method: str) -> None:
    empty = [name for name in SPLITS if rows.get(name, 0) == 0]
    if empty:
        raise BuildError(
            f"the {method} split leaves {', '.join(empty)} empty ({rows}): the labels hold too few "
            f"{'entities' if method == ENTITY_SPLIT else 'rows per snapshot date'} for train/valid/test"
        )


def encode_labels(labels: pl.Series, task: str, label_column: str) -> tuple[pl.Series, list[str] | None]:
    """The stored label for the task and, for multiclass, the class labels; BuildError naming the column."""
    if task not in TASKS:
        raise BuildError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    where = f"labels: column {label_column} (label)"
    if labels.null_count():
        raise BuildError(f"{where} has {labels.null_count()} null value(s): every label row needs a label")
    if task == BINARY:
        if labels.dtype == pl.Boolean:
            return labels.cast(pl.Int8).alias(LABEL), None
        if labels.dtype == pl.String:
            # a TEXT column spelling exactly '0'/'1' (the raw gate accepts it too); '1.0' or 'yes' is not 0/1
            bad = labels.filter(~labels.is_in(["0", "1"]))
        elif labels.dtype.is_numeric():
            bad = labels.filter(~labels.cast(pl.Float64).is_in([0.0, 1.0]).fill_null(False))
        else:
            bad = labels
        if bad.len():
            raise BuildError(
                f"{where}: a binary task needs 0/1 (or true/false) labels exactly, found {bad.len()} other "
                f"value(s) such as {_shown(bad)} ({labels.dtype}); nothing is rounded: fix the labels, or use "
                "--task multiclass or regression"
            )
        return labels.cast(pl.Float64).cast(pl.Int8).alias(LABEL), None
    if task == MULTICLASS:
        if labels.dtype.is_float():
            # a class is a name or a whole number: 2.5 (or NaN) is a measurement, not a class
            numbers = labels.cast(pl.Float64)
            bad = labels.filter(~(numbers.is_finite() & (numbers == numbers.round(0))).fill_null(False))
            if bad.len():
                raise BuildError(f"{where}: a multiclass task needs class labels (text, booleans or whole "
                                 f"numbers), found {bad.len()} value(s) such as {_shown(bad)}; use --task regression "
                                 "for a measured target")
            labels = labels.cast(pl.Int64)  # 1.0 is class 1, as the warehouse's REAL column meant it
        elif not (labels.dtype.is_integer() or labels.dtype in (pl.String, pl.Boolean, pl.Categorical)):
            raise BuildError(f"{where}: a multiclass task needs class labels (text, booleans or whole numbers), "
                             f"found {labels.dtype} values such as {_shown(labels)}")
        values = labels.unique().sort().to_list()
        if len(values) < 2:
            raise BuildError(f"{where}: a multiclass task needs at least 2 classes, found {values}")
        classes = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}
        return labels.replace_strict(index, return_dtype=pl.Int32).alias(LABEL), classes
    if not labels.dtype.is_numeric():
        raise BuildError(f"{where}: a regression task needs numeric labels, found {labels.dtype} values such as "
                         f"{_shown(labels)}")
    encoded = labels.cast(pl.Float64)
    if not np.isfinite(encoded.to_numpy()).all():
        raise BuildError(f"{where}: a regression task needs finite labels (found NaN or infinity)")
    return encoded.alias(LABEL), None


def _shown(values: pl.Series, count: int = 5) -> list:
    """A few distinct offending values, for a message."""
    return values.unique().sort().head(count).to_list()


def class_counts(labels: pl.Series, classes: list[str]) -> dict[str, int]:
    """Rows per class (every class, zero included), keyed by the class as the user's labels spell it."""
    counts = dict(labels.value_counts().iter_rows())
    return {name: int(counts.get(index, 0)) for index, name in enumerate(classes)}


def check_split_classes(labels: dict[str, pl.Series], task: str, label_column: str, classes: list[str] | None,
                        dates: dict[str, list[str]] | None = None) -> None:
    """Every split holds the classes its task needs, else a BuildError naming the split and the class counts.

    ``labels``: each split's encoded labels; ``classes``: the multiclass classes (binary: ``0`` and ``1``);
    ``dates``: each split's snapshot dates, shown for a time split.
    """
    if task == REGRESSION:
        return
    names = classes if task == MULTICLASS and classes else ["0", "1"]
    counts = {split: class_counts(values, names) for split, values in labels.items()}
    for split in SPLITS:
        found = counts.get(split, {})
        present = sum(1 for n in found.values() if n)
        if task == BINARY or split == "train":
            needed, why = len(names), "every class" if task == MULTICLASS else "both classes"
        else:
            needed, why = 2, "at least two classes"
        if present >= needed:
            continue
        at = f" (snapshot {', '.join(dates[split])})" if dates and dates.get(split) else ""
        missing = [name for name, n in found.items() if not n]
        raise BuildError(
            f"labels: column {label_column} (label): the {split} split{at} holds "
            f"{'one class only' if present == 1 else f'{present} of {len(names)} classes'} "
            f"(missing {', '.join(missing[:10])}): a {task} task needs {why} in {split}. Class counts: "
            + "; ".join(f"{name} {counts[name]}" for name in SPLITS if name in counts)
            + ". Use labels where every split has them (more snapshot dates or entities, or --split entity)"
        )


def label_rate(labels: pl.Series, task: str) -> float:
    """binary: the positive rate; multiclass: the share of the most frequent class; regression: 0."""
    if labels.is_empty() or task == REGRESSION:
        return 0.0
    if task == MULTICLASS:
        return float(labels.value_counts()["count"].max() / labels.len())
    return float(labels.mean())

"""Point-in-time correct feature engineering from a :class:`~features.engineering.spec.FeatureSpec`.

A *spine* row ``(entity_id, snapshot_ts[, label][, feature-table columns])`` gets features computed only
from events with ``event_ts < snapshot_ts`` (strictly before: an event at the snapshot instant is already
the future). A window of ``w`` days is ``[snapshot_ts - w days, snapshot_ts)``.

**One pass over the events**, whatever the number of windows and snapshots: the distinct snapshot
instants ``s`` and window starts ``s - w`` cut the time axis into a few *buckets*. Each event is put in
its bucket (a binary search), and one streaming ``group_by(entity_id, bucket)`` reduces the events to
per-bucket partials (counts, fixed-point sums and sums of squares, minima, maxima, the latest value,
first/last timestamps), sorted by (entity, bucket); the same scan yields the distinct (entity, bucket,
value) rows of the distinct-count columns. Every window of an entity is then a contiguous run of those
rows, found by binary search: counts and sums are differences of exact integer prefix sums, minima and
maxima come from vectorised range reductions (``numpy.ufunc.reduceat``), distinct counts from each
value's last bucket before the snapshot (below).
No event is ever joined to a snapshot it could leak into, and there is no events x snapshots blow-up.

**Bounded memory** (:func:`compute_feature_parts`, what the build uses): every feature of a row depends on its
own entity's events only, so large inputs are cut into ranges of entity ids (one streaming pass writes each
range's events to its own files), each range is computed as above on its own events, and the ranges are
read back in (snapshot_ts, entity_id) order: the same rows and values, one range in memory at a time.

**Exact definitions** (``x`` = a column's non-null values in the window; every feature is a Float64 or
integer, never null: rows without history get the defaults of ``DEFAULTS_DOC``):

- ``events_{w}d``: number of events in the window (all rows, whatever their values); ``events_total``:
  number of events before the snapshot.
- numeric columns (NaN and infinite values count as missing): ``sum``, ``mean``, ``std`` and ``last`` use
  the values rounded
  to ``numeric_decimals`` (6) decimals (fixed point, so that sums are exact and order-independent);
  ``min``/``max`` use the raw values.
  ``{c}_sum_{w}d`` = sum(x), 0 without values; ``{c}_mean_{w}d`` = sum(x) / count(x), 0 without values;
  ``{c}_min_{w}d`` / ``{c}_max_{w}d``, 0 without values; ``{c}_std_{w}d`` = sample standard deviation
  (ddof = 1) = sqrt((n * sum(x^2) - sum(x)^2) / (n * (n - 1))), the numerator exact in 128-bit fixed
  point, 0 when n < 2;
  ``{c}_last`` (not windowed) = the value of the latest event before the snapshot whose value is not
  null; ties (same ``event_ts``) are broken by the largest value; 0 without one.
- timestamp columns: ``x`` = the lag ``(event_ts - value)`` in days (a row is known at its event_ts),
  then as numeric columns under the stem ``{c}_lag_days`` (``{c}_lag_days_mean_{w}d``...).
- boolean columns (integers: non-zero is true): ``{c}_sum_{w}d`` = number of true values;
  ``{c}_mean_{w}d`` = true values / non-null values, 0 without values.
- categorical columns, over the top-K vocabulary (``categories[c]``: the K most frequent values of the
  events before the last training snapshot, ties by value, listed sorted; values compared as strings,
  booleans as "true"/"false"): ``{c}_{value}_{w}d`` = events with that value; ``{c}_{value}_share_{w}d``
  = that count / events with a non-null value of ``c`` in the window (0 when none).
- ``{c}_distinct_{w}d`` (categorical or high-cardinality): number of distinct non-null values (compared as
  strings) in the window.
- ``days_since_last_event`` = (snapshot - latest event before it) in days, ``NEVER_DAYS`` without one;
  ``days_since_first_event`` = (snapshot - first event) in days, ``UNKNOWN_DAYS`` without one.
- ratios ``[r, b]``: ``events_trend_{r}d_vs_prior_{b-r}d`` = (n_r + 1) / (n_prior * r / (b - r) + 1)
  with n_r = ``events_{r}d`` and n_prior = ``events_{b}d - events_{r}d`` (add-one smoothed ratio of daily
  rates: 1 without events); for each numeric column with ``sum``: ``{c}_sum_trend_{r}d_vs_prior_{b-r}d`` =
  slog(S_r) - slog((S_b - S_r) * r / (b - r)), slog(v) = sign(v) * ln(1 + |v|) (0 without events).
- entity attributes (joined on entity_id, the first row of each entity): ``numeric`` -> the value as
  Float64 (null, NaN or infinite: 0); ``boolean`` -> 0/1 (null 0); ``one_hot`` -> ``{col}_{value}`` 0/1 over the top-K
  vocabulary ``categories["entity.{col}"]``; ``days_since`` -> ``days_since_{col without _ts}`` =
  (snapshot - value) in days (null 0).
- feature-table columns (extra spine columns of a ready-made feature table): as entity attributes, with
  the vocabulary ``categories["table.{col}"]`` (fitted on all spine rows) and ``days_since`` allowed to
  be negative (a timestamp after the snapshot).

How distinct counts stay in the one pass: the same scan also yields the distinct (entity, bucket, value)
rows; sorted by (entity, value, bucket), each row knows the next bucket where the value occurs again. For snapshot ``s`` the values of an entity seen before ``s`` are the rows
with ``bucket < bucket(s) <= next``, each at the value's last bucket before ``s``; the distinct count of
window ``w`` is how many of them lie at or after the window's first bucket.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

import numpy as np
import polars as pl
from mlcontract.names import ENTITY, EVENT_TS, LABEL, SNAPSHOT

from features.engineering.spec import EventColumn, FeatureSpec
from features.errors import BuildError, SpecError

log = logging.getLogger(__name__)

# Bump when the feature logic changes: it is part of the snapshot hash, so old snapshots are not reused.
# (features-5: features from a declarative FeatureSpec; min/std/last/shares/distinct counts/table columns)
FEATURE_CODE_VERSION = "features-5"

# Defaults for rows without history: never null, and every "days" feature stays non-negative (the
# features gate checks that), with "never" as a long time ago rather than a negative sentinel.
NEVER_DAYS = 3650.0  # days_since_last_event when there is no event before the snapshot
UNKNOWN_DAYS = 0.0  # days_since_first_event without events; days_since_<ts> of a missing timestamp
DEFAULTS_DOC = (
    "no events before the snapshot (or no values in the window): counts, sums, means, minima, maxima, "
    "standard deviations, shares, distinct counts and last values are 0; days_since_last_event is "
    f"{NEVER_DAYS:g} (never = long ago), days_since_first_event is {UNKNOWN_DAYS:g}; the event trend ratio is 1 "
    "(add-one smoothed), a sum trend 0. Entity attributes and feature-table columns: a missing timestamp "
    "gives days_since_* = 0, a missing numeric or boolean 0, a missing or unlisted category all-zero "
    "one-hots; an entity absent from the entity table likewise."
)

# The build holds one part of the data in memory at a time (see compute_feature_parts): a part is the
# events and spine rows of a range of entities, at most this many of each.
PART_EVENTS = 4_000_000
PART_ROWS = 1_000_000
CHUNK_ROWS = 262_144  # rows per frame that FeatureParts.frames hands over (about one parquet row group)
PART_BATCH_ROWS = 1_000_000  # events per batch of the pass that writes them by part
_PART = "__part"

_US_PER_DAY = 86_400_000_000
_TWO64 = 2**64

Bounds = tuple[float | None, float | None]
# The range each kind of feature is guaranteed by its definition (the features gate checks exactly these;
# every numeric feature is also checked to be finite). Sums, means, minima and maxima of a numeric column
# are unbounded: their range is the source column's.
COUNT: Bounds = (0.0, None)  # event counts, category counts, std; also "days since" (never negative)
ONE_HOT: Bounds = (0.0, 1.0)  # one-hots, shares, boolean means
POSITIVE: Bounds = (math.nextafter(0.0, 1.0), None)  # strictly above 0 (the add-one smoothed trend ratio)
UNBOUNDED: Bounds = (None, None)

Categories = dict[str, list[str]]


# ---------------------------------------------------------------------------------------------- vocabulary


def _top_values(frame: pl.LazyFrame, column: str, limit: int) -> pl.LazyFrame:
    return (
        frame.select(pl.col(column).cast(pl.String))
        .drop_nulls()
        .group_by(column)
        .len()
        .sort(["len", column], descending=[True, False])
        .head(limit)
    )


def _counted(column: EventColumn) -> bool:
    return column.kind == "categorical" and bool({"count", "share"} & set(column.effective_aggregations))


def fit_categories(
    events: pl.LazyFrame | None,
    entities: pl.LazyFrame | None,
    spec: FeatureSpec,
    before: datetime | None = None,
    spine: pl.LazyFrame | None = None,
) -> Categories:
    """The category vocabulary: per column the top-K values by frequency (ties by value), listed sorted.

    Event categories come from events before ``before`` (the last snapshot), entity one-hots from the
    entity table (``entity.{col}``), feature-table one-hots from the spine (``table.{col}``). Store the
    result with the snapshot so scoring uses the same columns.
    """
    queries: dict[str, pl.LazyFrame] = {}
    if events is not None:
        if before is not None:
            events = events.filter(pl.col(EVENT_TS) < before)
        for col, column in spec.events.items():
            if _counted(column):
                queries[col] = _top_values(events, col, column.effective_top_k)
    for prefix, frame, uses in (("entity", entities, spec.entity_attributes), ("table", spine, spec.table_columns)):
        names = frame.collect_schema().names() if frame is not None else []
        for col, use in uses.items():
            if use.use == "one_hot" and col in names:  # a missing column is check_spec's to report
                queries[f"{prefix}.{col}"] = _top_values(frame, col, use.effective_top_k)
    if not queries:
        return {}
    # collected together so the event columns are scanned once
    frames = pl.collect_all(list(queries.values()), engine="streaming")
    return {name: sorted(frame.to_series(0).to_list()) for name, frame in zip(queries, frames, strict=True)}


def _slug(value: str) -> str:
    slug = re.sub(r"[^0-9a-zA-Z]+", "_", value).strip("_").lower()
    return slug or "blank"


def category_features(column: str, values: Sequence[str]) -> list[tuple[str, str]]:
    """(value, feature-name stem) pairs; refuses two values that would give the same column name."""
    stems = [f"{column}_{_slug(v)}" for v in values]
    if len(set(stems)) != len(stems):
        raise BuildError(f"category values of column {column!r} collide after slugging: {list(values)}")
    return list(zip(values, stems, strict=True))


# ---------------------------------------------------------------------------------------------- partials


def _days(delta: pl.Expr) -> pl.Expr:
    return delta.dt.total_microseconds().cast(pl.Float64) / _US_PER_DAY


def _numeric_value(col: str, column: EventColumn) -> pl.Expr:
    if column.kind == "timestamp":
        return _days(pl.col(EVENT_TS) - pl.col(col).cast(pl.Datetime("us")))
    value = pl.col(col).cast(pl.Float64)
    return pl.when(value.is_finite()).then(value)  # NaN and infinities count as missing values


def _stem(col: str, column: EventColumn) -> str:
    return f"{col}_lag_days" if column.kind == "timestamp" else col


@dataclass
class _Partials:
    """What the one pass over the events computes per (entity, bucket), by how windows combine it."""

    additive: list[pl.Expr]  # integer counts, fixed-point sums (and Int128 squares): prefix-sum differences
    minima: list[pl.Expr]
    maxima: list[pl.Expr]
    last: list[pl.Expr]  # Int128 (event_ts, fixed-point value) keys: their max is the latest value
    distinct: list[str]  # columns whose distinct (entity, bucket, value) rows are collected


def _partials(spec: FeatureSpec, categories: Categories, scale: int) -> _Partials:
    parts = _Partials([pl.len().cast(pl.Int64).alias("n")], [], [], [], [])
    for col, column in spec.events.items():
        aggs = set(column.effective_aggregations)
        if column.kind in ("numeric", "timestamp"):
            value = _numeric_value(col, column)
            fixed = (value * scale).round().cast(pl.Int64)  # exact, order-independent integer sums
            if aggs & {"sum", "mean", "std"}:
                parts.additive += [fixed.sum().alias(f"{col}__sum"), value.count().cast(pl.Int64).alias(f"{col}__cnt")]
            if "std" in aggs:  # exact squares of the fixed-point values (Int128 cannot overflow here)
                wide = fixed.cast(pl.Int128)
                parts.additive.append((wide * wide).sum().alias(f"{col}__sq"))
            if "min" in aggs:
                parts.minima.append(value.min().alias(f"{col}__min"))
            if "max" in aggs:
                parts.maxima.append(value.max().alias(f"{col}__max"))
            if "last" in aggs:
                # lexicographic (event_ts, value) in one integer: its max is the latest value, ties by value
                key = pl.col(EVENT_TS).dt.epoch("us").cast(pl.Int128) * _TWO64 + (fixed.cast(pl.Int128) + 2**63)
                parts.last.append(key.max().alias(f"{col}__last"))
        elif column.kind == "boolean":
            flag = pl.col(col).cast(pl.Boolean)
            parts.additive += [flag.sum().cast(pl.Int64).alias(f"{col}__true"),
                               flag.count().cast(pl.Int64).alias(f"{col}__cnt")]
        if column.kind == "categorical" and aggs & {"count", "share"}:
            text = pl.col(col).cast(pl.String)
            parts.additive += [
                (text == value).sum().cast(pl.Int64).alias(f"{col}__v{i}")
                for i, value in enumerate(categories.get(col, []))
            ]
            if "share" in aggs:
                parts.additive.append(text.count().cast(pl.Int64).alias(f"{col}__cnt"))
        if "distinct_count" in aggs:
            parts.distinct.append(col)
    return parts


def _raw(partial: str, w: int | str) -> str:
    """The name of a windowed (or ``all``: before the snapshot) partial column."""
    return f"{partial}@{w}"


# ---------------------------------------------------------------------------------------------- compute


def compute_features(
    events: pl.LazyFrame | None,
    spine: pl.LazyFrame,
    entities: pl.LazyFrame | None,
    spec: FeatureSpec,
    categories: Categories,
) -> pl.LazyFrame:
    """One row per spine row: entity_id, snapshot_ts (and label), then the features (spec order).

    Only events with ``event_ts < snapshot_ts`` of the row are used. Independent of any label column,
    so batch scoring calls it with a label-less spine. Spine columns other than entity_id, snapshot_ts,
    label and the spec's ``table_columns`` are dropped. Rows are sorted by (snapshot_ts, entity_id).

    The events are read once, lazily, by a streaming ``group_by`` that runs when this is called; its
    result (per-entity, per-bucket partials: at most spine entities x buckets rows) and the spine are
    held in memory for the lookups, and the returned frame joins the entity attributes lazily.
    """
    spine_schema = spine.collect_schema()
    spine_columns = [c for c in (ENTITY, SNAPSHOT, LABEL) if c in spine_schema]
    spine = spine.select(
        pl.col(ENTITY).cast(pl.String),
        pl.col(SNAPSHOT).cast(pl.Datetime("us")),
        *([pl.col(LABEL)] if LABEL in spine_schema else []),
        *(pl.col(c).alias(_table(c)) for c in spec.table_columns if c in spine_schema),
    )
    table_schema = pl.Schema({c: spine_schema[c] for c in spec.table_columns if c in spine_schema})
    entity_schema = entities.collect_schema() if entities is not None else None
    _check_names(spec, categories, entity_schema, table_schema)
    spine_rows = spine.collect(engine="streaming")
    if spine_rows.height == 0 or events is None or not spec.uses_events:
        out = spine_rows.sort(SNAPSHOT, ENTITY).lazy()
        return _finalise(out, False, spine_columns, entities, spec, categories, table_schema)

    events = events.with_columns(pl.col(EVENT_TS).cast(pl.Datetime("us")))
    snapshots = spine_rows[SNAPSHOT].unique().sort().to_list()
    windows = spec.windows_days

    # Bucket boundaries: each snapshot instant and each window start; bucket i = [B[i], B[i+1]), and
    # bucket -1 is everything before B[0]. Every window [s - w, s) is a run of whole buckets.
    boundaries = sorted({s - timedelta(days=w) for s in snapshots for w in windows} | set(snapshots))
    position = {b: i for i, b in enumerate(boundaries)}
    stride = len(boundaries) + 1  # buckets per entity, bucket -1 included

    # Entity codes: the rank of the entity among the sorted spine entities (so sorting by code is sorting
    # by entity_id); events of entities outside the spine are dropped by the join.
    codes = spine_rows.select(pl.col(ENTITY).unique().sort()).with_row_index("code")

    scale = 10**spec.numeric_decimals
    parts = _partials(spec, categories, scale)
    bucket = pl.lit(pl.Series(boundaries, dtype=pl.Datetime("us"))).search_sorted(pl.col(EVENT_TS), side="right")

    # The one pass over the events (streaming): the partials, sorted by (entity, bucket) = by `key`, and
    # for each distinct-count column its distinct (entity, bucket, value) rows. Collected together, the
    # scan is shared: the streaming engine reads the events once and feeds every aggregation.
    started = time.perf_counter()
    bucketed = events.filter(pl.col(EVENT_TS) < snapshots[-1]).with_columns(
        bucket.cast(pl.Int64).alias("bucket")  # = bucket index + 1, in [0, stride)
    )
    aggregated = (
        bucketed.group_by(ENTITY, "bucket")
        .agg(
            *parts.additive, *parts.minima, *parts.maxima, *parts.last,
            pl.col(EVENT_TS).min().alias("first_ts"),
            pl.col(EVENT_TS).max().alias("last_ts"),
        )
        .join(codes.lazy(), on=ENTITY, how="inner")
        .select(
            (pl.col("code").cast(pl.Int64) * stride + pl.col("bucket")).alias("key"),
            pl.exclude(ENTITY, "code", "bucket"),
        )
    )
    distinct_rows = [
        bucketed.select(ENTITY, "bucket", pl.col(col).cast(pl.String).alias("value"))
        .drop_nulls("value")
        .group_by(ENTITY, "bucket", "value")
        .agg()
        .join(codes.lazy(), on=ENTITY, how="inner")
        .select(pl.col("code").cast(pl.Int64).alias("entity"), "bucket", "value")
        for col in parts.distinct
    ]
    partials, *occurrences = pl.collect_all([aggregated, *distinct_rows], engine="streaming")
    partials = partials.sort("key")
    log.info(
        "aggregated the events into %s (entity, bucket) partials in %.1f s",
        f"{partials.height:,}",
        time.perf_counter() - started,
    )
    additive_names = [e.meta.output_name() for e in parts.additive]
    events_seen = max(float(partials["n"].sum()), 1.0)
    for name in additive_names:  # running totals across all entities (Int64 sums, Int128 n * squares): no overflow
        magnitude = partials[name].cast(pl.Float64).abs().sum()
        if (name.endswith("__sum") and magnitude >= 2**62) or (name.endswith("__sq") and magnitude * events_seen >= 2**126):
            column = name.split("__")[0]
            raise SpecError(
                f"events column {column!r}: total magnitude is too large for fixed point with "
                f"{spec.numeric_decimals} decimals; lower numeric_decimals in the feature spec"
            )

    # For each spine key and each boundary offset (0 = the snapshot, w = a window start): how many
    # partial rows lie before it. A window is then the row range [row(s - w), row(s)).
    snapshot_index = {s: i for i, s in enumerate(snapshots)}
    lookup = (
        spine_rows.join(codes, on=ENTITY, how="left")
        .with_columns(
            row_order=pl.col(SNAPSHOT).replace_strict(snapshot_index, return_dtype=pl.Int64) * codes.height
            + pl.col("code")
        )
        .sort("row_order")  # = by (snapshot_ts, entity_id), as one integer
        .drop("row_order")
    )
    entity_base = lookup["code"].cast(pl.Int64) * stride
    sorted_keys = partials["key"].to_numpy()

    def first_bucket(offset_days: int) -> pl.Series:
        """Per lookup row: the bucket (index + 1) where [snapshot - offset, ...) starts."""
        buckets = {s: position[s - timedelta(days=offset_days)] + 1 for s in snapshots}
        return lookup[SNAPSHOT].replace_strict(buckets, return_dtype=pl.Int64)

    def rows_before(offset_days: int | None) -> np.ndarray:
        target = entity_base if offset_days is None else entity_base + first_bucket(offset_days)
        return np.searchsorted(sorted_keys, target.to_numpy(), side="left").astype(np.int64)

    start, end = rows_before(None), rows_before(0)
    begins = {w: rows_before(w) for w in windows}
    has_history = end > start

    columns: dict[str, Any] = {name: lookup[name] for name in lookup.columns}
    # exact integer prefix sums (row 0 = nothing yet), gathered at the run ends: whole-frame gathers
    # and arithmetic run on all cores
    prefix = pl.concat(
        [
            pl.DataFrame([pl.Series(name, [0], partials.schema[name]) for name in additive_names]),
            partials.select(pl.col(additive_names).cum_sum()),
        ]
    )
    at_end = prefix[pl.Series(end)]
    for w in windows:
        totals = at_end - prefix[pl.Series(begins[w])]
        columns.update({_raw(name, w): totals[name] for name in additive_names})
    columns[_raw("n", "all")] = at_end["n"] - prefix["n"].gather(start)
    for exprs, ufunc in ((parts.minima, np.fmin), (parts.maxima, np.fmax)):
        for expr in exprs:
            name = expr.meta.output_name()
            values = partials[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
            for w in windows:
                columns[_raw(name, w)] = pl.Series(range_reduce(ufunc, values, begins[w], end), nan_to_null=True)
    for expr in parts.last:
        name = expr.meta.output_name()
        fixed = partials.select(((pl.col(name) % _TWO64) - 2**63).cast(pl.Int64)).to_series()
        columns[_raw(name, "all")] = _last_in_range(fixed.cast(pl.Float64) / scale, start, end)
    for col, rows in zip(parts.distinct, occurrences, strict=True):
        counts = _distinct_counts(rows, stride, entity_base, first_bucket, windows)
        columns.update({_raw(f"{col}__distinct", w): counts[w] for w in windows})
    # Buckets are in time order, so the first event is in the entity's first row, the last one before
    # the snapshot in the row just before `end`.
    no_time = pl.Series([None] * lookup.height, dtype=pl.Datetime("us"))
    history = pl.Series(has_history)
    for name, row in (("first_ts", start), ("last_ts", end - 1)):
        if partials.height:
            found = partials[name].gather(np.clip(row, 0, partials.height - 1))
            columns[name] = found.zip_with(history, no_time)
        else:
            columns[name] = no_time
    return _finalise(pl.DataFrame(columns).lazy(), True, spine_columns, entities, spec, categories, table_schema,
                     codes)


class FeatureParts:
    """The features of a spine, computed part by part, read back in (snapshot_ts, entity_id) order.

    Parts are ranges of the sorted entity ids, each sorted by (snapshot_ts, entity_id), so the rows of one
    snapshot are the parts' rows of that snapshot one part after the other: reading back needs no sort.
    A context manager: leaving it removes the parts' working directory.
    """

    def __init__(self, parts: list[pl.LazyFrame], runs: list[dict[Any, tuple[int, int]]], schema: pl.Schema,
                 workdir: tempfile.TemporaryDirectory | None = None):
        self.parts = parts
        self.runs = runs  # per part: snapshot -> (first row, rows) of its run
        self.snapshots = sorted({s for run in runs for s in run}, key=lambda s: (s is not None, s))
        self.schema = schema
        self._workdir = workdir

    @property
    def feature_columns(self) -> list[str]:
        return feature_columns(pl.LazyFrame(schema=self.schema))

    def frames(self, where: pl.Expr | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[pl.DataFrame]:
        """The rows (matching ``where``) in order, in frames of about ``chunk_rows`` rows; at least one frame
        (empty, with the schema, when no row matches), so that a writer always has the schema."""
        # a condition on the snapshot alone is decided per snapshot: parts are not even read for the others
        by_snapshot = where is not None and where.meta.root_names() == [SNAPSHOT]
        buffered: list[pl.DataFrame] = []
        size, sent = 0, False
        for snapshot in self.snapshots:
            if by_snapshot and not pl.DataFrame({SNAPSHOT: [snapshot]}, schema={SNAPSHOT: pl.Datetime("us")}).select(
                where
            ).item():
                continue
            for part, runs in zip(self.parts, self.runs, strict=True):
                if snapshot not in runs:
                    continue
                rows = part.slice(*runs[snapshot])  # a slice reads only the row groups it overlaps
                chunk = (rows if where is None or by_snapshot else rows.filter(where)).collect()
                if chunk.height:
                    buffered.append(chunk)
                    size += chunk.height
                if size >= chunk_rows:
                    yield pl.concat(buffered)
                    buffered, size, sent = [], 0, True
        if buffered or not sent:
            yield pl.concat(buffered) if buffered else pl.DataFrame(schema=self.schema)

    def collect(self) -> pl.DataFrame:
        """Every row, in memory (small data and tests)."""
        return pl.concat(list(self.frames()))

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compute_feature_parts(
    events: pl.LazyFrame | None,
    spine: pl.LazyFrame,
    entities: pl.LazyFrame | None,
    spec: FeatureSpec,
    categories: Categories,
    *,
    part_events: int | None = None,
    part_rows: int | None = None,
) -> FeatureParts:
    """:func:`compute_features` in bounded memory: the same rows and values, computed per range of entities.

    Small inputs (at most ``part_events`` events and ``part_rows`` spine rows, default :data:`PART_EVENTS`
    and :data:`PART_ROWS`) are computed at once, in
    memory. Larger ones are cut into ranges of the sorted spine entity ids holding about that many each:
    one streaming pass writes the events (and entity rows) of each range to its own parquet files in a
    working directory, then each range is computed alone (its one pass over its own events) and written
    there; :meth:`FeatureParts.frames` reads them back in order. Every feature of a row depends on its
    entity's events only, so the parts are exactly the one-shot result cut by entity.
    """
    spine_rows = spine.with_columns(pl.col(ENTITY).cast(pl.String), pl.col(SNAPSHOT).cast(pl.Datetime("us"))).collect()
    with_events = events is not None and spec.uses_events and spine_rows.height > 0
    n_events = events.select(pl.len()).collect().item() if with_events else 0
    ids = spine_rows[ENTITY].drop_nulls().unique().sort()
    part_events, part_rows = max(part_events or PART_EVENTS, 1), max(part_rows or PART_ROWS, 1)
    count = max(1, min(ids.len(), max(-(-n_events // part_events), -(-spine_rows.height // part_rows))))
    if count == 1:
        table = compute_features(events, spine_rows.lazy(), entities, spec, categories).collect(engine="in-memory")
        return FeatureParts([table.lazy()], [_runs(table)], table.schema)

    started = time.perf_counter()
    # the part of each spine entity: its rank among the sorted ids, cut into `count` equal ranges. A join
    # with this table streams (an expression over a literal series made polars hold the whole input).
    ranges = pl.DataFrame({ENTITY: ids, _PART: pl.int_range(0, ids.len(), eager=True) * count // ids.len()})
    workdir = tempfile.TemporaryDirectory(prefix="feature-parts-")
    root = workdir.name
    try:
        sources: dict[str, pl.LazyFrame] = {}
        if with_events:
            # events at or after the last snapshot never count (compute_features drops them too)
            sources["events"] = events.filter(pl.col(EVENT_TS).cast(pl.Datetime("us")) < spine_rows[SNAPSHOT].max())
        if entities is not None:
            sources["entities"] = entities
        for name, frame in sources.items():
            # (events and entity rows of entities outside the spine are never used: the join drops them)
            keyed = frame.with_columns(pl.col(ENTITY).cast(pl.String)).join(
                ranges.lazy(), on=ENTITY, how="inner", maintain_order="left" if name == "entities" else "none"
            )  # the entities' order is kept: an entity's attributes are its first row
            _write_parts(keyed, os.path.join(root, name))
        log.info("split %s events and %s label rows into %d parts by entity in %.1f s", f"{n_events:,}",
                 f"{spine_rows.height:,}", count, time.perf_counter() - started)

        def scan(name: str, part: int) -> pl.LazyFrame | None:
            if name not in sources:
                return None
            path = os.path.join(root, name, f"{part:05d}.parquet")
            if not os.path.exists(path):  # no rows in this range
                return sources[name].clear()
            return pl.scan_parquet(path)

        spine_parts = (
            spine_rows.join(ranges, on=ENTITY, how="left", maintain_order="left")
            .with_columns(pl.col(_PART).fill_null(0))  # (a null id: compute_features gives it the defaults)
            .partition_by(_PART, as_dict=True, include_key=False)
        )
        files, runs, schema = [], [], None
        for part in range(count):
            rows = spine_parts.get((part,), spine_rows.clear())
            table = compute_features(scan("events", part), rows.lazy(), scan("entities", part), spec,
                                     categories).collect(engine="in-memory")
            path = os.path.join(root, f"features-{part:05d}.parquet")
            # small row groups with statistics: reading one snapshot back skips the others' row groups
            table.write_parquet(path, compression="lz4", statistics=True, row_group_size=CHUNK_ROWS // 4)
            files.append(path)
            runs.append(_runs(table))
            schema = table.schema
            del table
        log.info("computed the features of %d parts in %.1f s", count, time.perf_counter() - started)
    except BaseException:
        workdir.cleanup()
        raise
    return FeatureParts([pl.scan_parquet(path) for path in files], runs, schema, workdir)


def _write_parts(frame: pl.LazyFrame, directory: str) -> None:
    """The rows of ``frame`` into ``{directory}/{part}.parquet`` by their ``_PART`` column, batch by batch.

    (One writer per part, a row group per batch and part: memory holds one batch. polars' partitioned
    sink held about the whole input at 50 M events.)
    """
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    writers: dict[int, Any] = {}
    try:
        for batch in frame.collect_batches(chunk_size=PART_BATCH_ROWS):
            for (part,), rows in batch.partition_by(_PART, as_dict=True, include_key=False).items():
                table = rows.to_arrow()
                if part not in writers:
                    path = os.path.join(directory, f"{part:05d}.parquet")
                    # working files, read once: the cheapest compression to write and read
                    writers[part] = pq.ParquetWriter(path, table.schema, compression="lz4")
                writers[part].write_table(table.cast(writers[part].schema))
    finally:
        for writer in writers.values():
            writer.close()


def _runs(table: pl.DataFrame) -> dict[Any, tuple[int, int]]:
    """snapshot -> (first row, rows) of its run in a table sorted by snapshot."""
    lengths = table.group_by(SNAPSHOT, maintain_order=True).len()
    starts = lengths["len"].cum_sum() - lengths["len"]
    return {s: (int(o), int(n)) for s, o, n in zip(lengths[SNAPSHOT].to_list(), starts, lengths["len"], strict=True)}


def range_reduce(ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(values[lo[i]:hi[i]])`` for every i, NaN for an empty range, in one vectorised pass.

    ``reduceat`` over the interleaved bounds (lo0, hi0, lo1, hi1, ...) reduces each [lo, hi) and, in
    between, each [hi, next lo) (discarded); with the queries sorted that is about one sweep of the array.
    """
    padded = np.append(values.astype(np.float64), np.nan)  # so that hi == len(values) is a valid index
    bounds = np.empty(2 * len(lo), dtype=np.intp)
    bounds[0::2], bounds[1::2] = lo, hi
    out = ufunc.reduceat(padded, bounds)[0::2] if len(lo) else np.empty(0)
    out[hi <= lo] = np.nan  # reduceat gives values[lo] for an empty range
    return out


def range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``nanmax(values[lo[i]:hi[i]])`` for every i (NaN for an empty or all-NaN range)."""
    return range_reduce(np.fmax, values, lo, hi)


def _last_in_range(values: pl.Series, lo: np.ndarray, hi: np.ndarray) -> pl.Series:
    """The last non-null value in rows [lo, hi) (null when there is none)."""
    present = values.is_not_null().to_numpy()
    last_row = np.maximum.accumulate(np.where(present, np.arange(len(values)), -1)) if len(values) else np.empty(0)
    at = np.clip(hi - 1, 0, max(len(values) - 1, 0))
    row = last_row[at] if len(values) else np.full(len(hi), -1)
    found = (hi > lo) & (row >= lo)
    gathered = values.gather(np.clip(row, 0, None)) if len(values) else pl.Series([None] * len(hi), dtype=pl.Float64)
    return gathered.zip_with(pl.Series(found), pl.Series([None] * len(hi), dtype=pl.Float64))


def _distinct_counts(
    rows: pl.DataFrame,
    stride: int,
    entity_base: pl.Series,
    first_bucket: Callable[[int], pl.Series],
    windows: Sequence[int],
) -> dict[int, pl.Series]:
    """Per lookup row and window: the number of distinct values (see the module docstring)."""
    occurrences = (
        rows.with_columns(pl.col("value").cast(pl.Categorical).to_physical())  # an integer code per value
        .sort("entity", "value", "bucket")
        .with_columns(
            next=pl.when(
                (pl.col("entity") == pl.col("entity").shift(-1)) & (pl.col("value") == pl.col("value").shift(-1))
            )
            .then(pl.col("bucket").shift(-1))
            .otherwise(stride)
        )
    )
    # per lookup row: its snapshot's bucket (values before the snapshot are in lower ones) and window starts
    queries = pl.DataFrame(
        {"entity": entity_base // stride, "hi": first_bucket(0), **{f"lo{w}": first_bucket(w) for w in windows}}
    )
    snapshots = queries.drop("entity").unique("hi").sort("hi").with_row_index("snapshot", offset=0)
    his = pl.lit(snapshots["hi"])
    # each (entity, value, bucket) row is the value's last occurrence before the snapshots whose bucket
    # lies in (bucket, next]: a contiguous run of snapshots, exploded (values recur: runs are short)
    seen = (
        occurrences.with_columns(
            first=his.search_sorted(pl.col("bucket"), side="right").cast(pl.Int64),
            stop=his.search_sorted(pl.col("next"), side="right").cast(pl.Int64),
        )
        .filter(pl.col("stop") > pl.col("first"))
        .select("entity", "bucket", snapshot=pl.int_ranges("first", "stop").cast(pl.List(pl.UInt32)))
        .explode("snapshot")
        .join(snapshots, on="snapshot")
        .group_by("entity", "hi")
        .agg((pl.col("bucket") >= pl.col(f"lo{w}")).sum().cast(pl.Int64).alias(str(w)) for w in windows)
    )
    counts = queries.join(seen, on=["entity", "hi"], how="left", maintain_order="left")
    return {w: counts[str(w)].fill_null(0) for w in windows}


# ---------------------------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Feature:
    """One output column: its expression (over the windowed partials) and the range its definition guarantees."""

    name: str
    expr: pl.Expr
    bounds: Bounds


def _slog(value: pl.Expr) -> pl.Expr:
    return value.sign() * value.abs().log1p()


def feature_definitions(
    spec: FeatureSpec,
    categories: Categories,
    entity_schema: pl.Schema | None,
    table_schema: pl.Schema | None = None,
    windowed: Callable[[str, pl.DataType], pl.Expr] = lambda name, dtype: pl.col(name).cast(dtype),
) -> list[Feature]:
    """Every feature, in output order. ``windowed(name, dtype)`` gives a windowed partial column.

    The one place a feature is defined: :func:`compute_features` selects the expressions and
    :func:`feature_bounds` records the bounds in the snapshot manifest.
    """
    features: list[Feature] = []

    def add(name: str, expr: pl.Expr, bounds: Bounds) -> None:
        features.append(Feature(name, expr.alias(name), bounds))

    scale = 10**spec.numeric_decimals

    def count(partial: str, w: int | str) -> pl.Expr:
        return windowed(_raw(partial, w), pl.Int64).fill_null(0)

    def total(col: str, w: int | str) -> pl.Expr:
        return windowed(_raw(f"{col}__sum", w), pl.Float64).fill_null(0.0) / scale

    def ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
        return pl.when(denominator > 0).then(numerator.cast(pl.Float64) / denominator).otherwise(0.0)

    for w in spec.windows_days if spec.uses_events else ():
        add(f"events_{w}d", count("n", w), COUNT)
        for col, column in spec.events.items():
            stem, aggs = _stem(col, column), column.effective_aggregations
            if column.kind in ("numeric", "timestamp"):
                n = count(f"{col}__cnt", w)
                for agg in aggs:
                    if agg == "sum":
                        add(f"{stem}_sum_{w}d", total(col, w), UNBOUNDED)
                    elif agg == "mean":
                        add(f"{stem}_mean_{w}d", ratio(total(col, w), n), UNBOUNDED)
                    elif agg in ("min", "max"):
                        add(f"{stem}_{agg}_{w}d", windowed(_raw(f"{col}__{agg}", w), pl.Float64).fill_null(0.0),
                            UNBOUNDED)
                    elif agg == "std":
                        # n * sum(x^2) - sum(x)^2 exactly, in Int128 fixed point: no cancellation error
                        squares = windowed(_raw(f"{col}__sq", w), pl.Int128).fill_null(0)
                        sums = windowed(_raw(f"{col}__sum", w), pl.Int128).fill_null(0)
                        spread = (n.cast(pl.Int128) * squares - sums * sums).cast(pl.Float64)
                        variance = spread / (n * (n - 1)).cast(pl.Float64) / float(scale) ** 2
                        std = pl.when(n >= 2).then(variance.clip(lower_bound=0.0).sqrt()).otherwise(0.0)
                        add(f"{stem}_std_{w}d", std, COUNT)
            elif column.kind == "boolean":
                if "sum" in aggs:
                    add(f"{col}_sum_{w}d", count(f"{col}__true", w), COUNT)
                if "mean" in aggs:
                    add(f"{col}_mean_{w}d", ratio(count(f"{col}__true", w), count(f"{col}__cnt", w)), ONE_HOT)
            if column.kind == "categorical":
                pairs = category_features(col, categories.get(col, []))
                for i, (_, category) in enumerate(pairs):
                    if "count" in aggs:
                        add(f"{category}_{w}d", count(f"{col}__v{i}", w), COUNT)
                    if "share" in aggs:
                        add(f"{category}_share_{w}d", ratio(count(f"{col}__v{i}", w), count(f"{col}__cnt", w)),
                            ONE_HOT)
            if "distinct_count" in aggs:
                add(f"{col}_distinct_{w}d", count(f"{col}__distinct", w), COUNT)

    snapshot = pl.col(SNAPSHOT)
    if spec.uses_events:
        add("events_total", count("n", "all"), COUNT)
        for col, column in spec.events.items():
            if "last" in column.effective_aggregations:
                add(f"{_stem(col, column)}_last", windowed(_raw(f"{col}__last", "all"), pl.Float64).fill_null(0.0),
                    UNBOUNDED)
    if spec.recency:
        add("days_since_last_event", _days(snapshot - pl.col("last_ts")).fill_null(NEVER_DAYS), COUNT)
    if spec.tenure:
        add("days_since_first_event", _days(snapshot - pl.col("first_ts")).fill_null(UNKNOWN_DAYS), COUNT)

    for recent, base in spec.ratios:
        suffix = f"trend_{recent}d_vs_prior_{base - recent}d"
        n_recent = count("n", recent).cast(pl.Float64)
        n_before = count("n", base).cast(pl.Float64) - n_recent
        # ratio of daily event rates, add-one smoothed on the recent count (and the same pseudo-rate on
        # the earlier one) so that "no events at all" is 1 (flat) and it never divides by zero
        add(f"events_{suffix}", (n_recent + 1.0) / (n_before * recent / (base - recent) + 1.0), POSITIVE)
        for col, column in spec.events.items():
            if column.kind == "numeric" and "sum" in column.effective_aggregations:
                s_recent = total(col, recent)
                s_before = (total(col, base) - s_recent) * recent / (base - recent)
                add(f"{col}_sum_{suffix}", _slog(s_recent) - _slog(s_before), UNBOUNDED)

    sections = (("entity", _attribute, spec.entity_attributes, entity_schema),
                ("table", _table, spec.table_columns, table_schema))
    for prefix, renamed, uses, schema in sections:
        for col, use in uses.items():
            if schema is None or col not in schema or use.use == "ignore":
                continue
            value_of = pl.col(renamed(col))
            if use.use == "days_since":
                days = _days(snapshot - value_of.cast(pl.Datetime("us"))).fill_null(UNKNOWN_DAYS)
                add(f"days_since_{col.removesuffix('_ts')}", days, COUNT if prefix == "entity" else UNBOUNDED)
            elif use.use == "one_hot":
                for value, stem in category_features(col, categories.get(f"{prefix}.{col}", [])):
                    add(stem, (value_of.cast(pl.String) == value).fill_null(False).cast(pl.Int8), ONE_HOT)
            elif use.use == "boolean":
                add(col, value_of.cast(pl.Boolean).fill_null(False).cast(pl.Int8), ONE_HOT)
            else:
                value = value_of.cast(pl.Float64)
                add(col, pl.when(value.is_finite()).then(value).otherwise(0.0), UNBOUNDED)
    return features


def _check_names(
    spec: FeatureSpec, categories: Categories, entity_schema: pl.Schema | None, table_schema: pl.Schema | None
) -> None:
    """Refuse two features with one name (e.g. an entity attribute named like an event feature)."""
    names = [f.name for f in feature_definitions(spec, categories, entity_schema, table_schema)]
    clashes = sorted({n for n in names if names.count(n) > 1} | ({ENTITY, SNAPSHOT, LABEL} & set(names)))
    if clashes:
        raise SpecError(f"feature spec: these feature names would be produced twice or clash with the spine: "
                        f"{clashes[:10]} (rename or ignore one of the columns behind them)")


def feature_bounds(
    spec: FeatureSpec, categories: Categories, entity_schema: pl.Schema | None, table_schema: pl.Schema | None = None
) -> dict[str, Bounds]:
    """The declared range of every feature column (what the features gate checks)."""
    return {f.name: f.bounds for f in feature_definitions(spec, categories, entity_schema, table_schema)}


def _attribute(column: str) -> str:
    # entity attributes are joined under these names so one can never clash with a spine or feature column
    return f"__entity_{column}"


def _table(column: str) -> str:
    # likewise for the columns of a ready-made feature table, carried in the spine
    return f"__table_{column}"


def _finalise(
    out: pl.LazyFrame,
    has_events: bool,
    spine_columns: list[str],
    entities: pl.LazyFrame | None,
    spec: FeatureSpec,
    categories: Categories,
    table_schema: pl.Schema,
    codes: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """Spine columns + derived features with their defaults, in order; rows keep the order of ``out``."""
    if not has_events:  # no events, or an empty spine: every event feature takes its default
        out = out.with_columns(
            pl.lit(None, pl.Datetime("us")).alias("first_ts"),
            pl.lit(None, pl.Datetime("us")).alias("last_ts"),
        )

    def windowed(name: str, dtype: pl.DataType) -> pl.Expr:
        return pl.col(name).cast(dtype) if has_events else pl.lit(None, dtype).alias(name)

    entity_schema = None
    if entities is not None:
        entity_schema = entities.collect_schema()
        attributes = [c for c in spec.entity_attributes if c in entity_schema and c != ENTITY]
        attribute_rows = (
            entities.select(pl.col(ENTITY).cast(pl.String), *attributes)
            .unique(ENTITY, keep="first")
            .rename({c: _attribute(c) for c in attributes})
        )
        if codes is not None:  # join on the integer entity code, cheaper than on the string id
            attribute_rows = attribute_rows.join(codes.lazy(), on=ENTITY, how="inner").drop(ENTITY)
        out = out.join(
            attribute_rows, on="code" if codes is not None else ENTITY, how="left", maintain_order="left"
        )
    features = feature_definitions(spec, categories, entity_schema, table_schema, windowed)
    return out.select(*spine_columns, *(f.expr for f in features))


def feature_columns(frame: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """The feature columns of a ``compute_features`` result, in order (everything but the spine)."""
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    return [c for c in names if c not in (ENTITY, SNAPSHOT, LABEL)]

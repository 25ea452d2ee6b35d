"""Point-in-time correct feature engineering (polars, lazy, streaming) and the content-addressed snapshot.

A *spine* row ``(entity_id, snapshot_ts[, label])`` gets features computed only from events with
``event_ts < snapshot_ts`` (strictly before: an event at the snapshot instant is already the future).

How it stays one pass over the events whatever the number of windows and snapshots: the distinct
snapshot instants ``s`` and window starts ``s - w`` cut the time axis into a few *buckets*. Each event is
put in its bucket (a binary search), and one streaming ``group_by(entity_id, bucket)`` reduces the 10 M+
events to per-bucket partials (counts, fixed-point sums, maxima, first/last timestamps), sorted by
(entity, bucket). Every window ``[s - w, s)`` of an entity is then a contiguous run of those rows, found
by binary search: counts and sums are differences of exact integer prefix sums, maxima come from one
vectorised range-maximum pass (``numpy.fmax.reduceat``), first/last event times from the run's ends.
No event is ever joined to a snapshot it could leak into, and there is no events x snapshots blow-up.

Rows without history get defaults, never nulls (see ``DEFAULTS_DOC``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from mlcontract.names import ENTITY, EVENT_TS, LABEL, SNAPSHOT

from features.errors import BuildError

log = logging.getLogger(__name__)

# Bump when the feature logic changes: it is part of the snapshot hash, so old snapshots are not reused.
# (features-4: the snapshot manifest is a typed SnapshotManifest with the declared feature bounds)
FEATURE_CODE_VERSION = "features-4"

# Defaults for rows without history: never null, and every "days" feature stays non-negative (the
# features gate checks that), with "never" as a long time ago rather than a negative sentinel.
NEVER_DAYS = 3650.0  # days_since_last_event when there is no event before the snapshot
UNKNOWN_DAYS = 0.0  # days_since_first_event without events; days_since_<ts> of a missing timestamp
DEFAULTS_DOC = (
    "no events before the snapshot: counts, sums, means and maxima are 0; days_since_last_event is "
    f"{NEVER_DAYS:g} (never = long ago), days_since_first_event is {UNKNOWN_DAYS:g}; the event trend ratio is 1 "
    "(add-one smoothed). Entity attributes: a missing timestamp gives days_since_* = 0, a missing numeric "
    "0, a missing or unlisted category all-zero one-hots; an entity absent from the entity table likewise."
)

_US_PER_DAY = 86_400_000_000

Bounds = tuple[float | None, float | None]
# The range each kind of feature is guaranteed by its definition (the features gate checks exactly these;
# every numeric feature is also checked to be finite). Sums, means and maxima of a numeric column are
# unbounded: their range is the source column's.
COUNT: Bounds = (0.0, None)  # event counts, category counts; also "days since" (never negative)
ONE_HOT: Bounds = (0.0, 1.0)
POSITIVE: Bounds = (math.nextafter(0.0, 1.0), None)  # strictly above 0 (the add-one smoothed trend ratio)
UNBOUNDED: Bounds = (None, None)


@dataclass(frozen=True)
class FeatureConfig:
    """What features to compute. Part of the snapshot hash: change it and a new snapshot is built."""

    windows_days: tuple[int, ...] = (7, 30, 90)
    numeric_columns: tuple[str, ...] = ("amount",)
    categorical_columns: tuple[str, ...] = ("event_type", "channel")
    # numeric sums are computed in fixed point with this many decimals: exact and order-independent
    numeric_decimals: int = 6
    max_categories: int = 20
    entity_max_categories: int = 20
    # trend: event rate in the last `recent` days vs the rate in the `base - recent` days before it;
    # computed only when both are among windows_days.
    trend_recent_days: int = 30
    trend_base_days: int = 90

    def __post_init__(self) -> None:
        windows = tuple(sorted({int(w) for w in self.windows_days}))
        if not windows or windows[0] <= 0:
            raise ValueError(f"windows_days must be positive, got {self.windows_days!r}")
        object.__setattr__(self, "windows_days", windows)
        object.__setattr__(self, "numeric_columns", tuple(self.numeric_columns))
        object.__setattr__(self, "categorical_columns", tuple(self.categorical_columns))
        if not 0 <= self.numeric_decimals <= 9:
            raise ValueError(f"numeric_decimals must be within [0, 9], got {self.numeric_decimals}")
        if not 0 < self.trend_recent_days < self.trend_base_days:
            raise ValueError("trend_recent_days must be positive and smaller than trend_base_days")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload.items() if k in names})


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


def fit_categories(
    events: pl.LazyFrame,
    entities: pl.LazyFrame | None,
    config: FeatureConfig,
    before: datetime | None = None,
) -> Categories:
    """The category vocabulary: the top-N values by frequency (ties by value), listed sorted.

    Event categories come from events before ``before`` (the last snapshot), entity categories from the
    entity table. Store the result with the snapshot so scoring uses the same columns.
    """
    if before is not None:
        events = events.filter(pl.col(EVENT_TS) < before)
    queries = {col: _top_values(events, col, config.max_categories) for col in config.categorical_columns}
    if entities is not None:
        for col, dtype in entities.collect_schema().items():
            if col != ENTITY and dtype in (pl.String, pl.Categorical, pl.Enum):
                queries[f"entity.{col}"] = _top_values(entities, col, config.entity_max_categories)
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
        raise BuildError(f"category values of {column!r} collide after slugging: {list(values)}")
    return list(zip(values, stems, strict=True))


# ---------------------------------------------------------------------------------------------- features


def _days(delta: pl.Expr) -> pl.Expr:
    return delta.dt.total_microseconds().cast(pl.Float64) / _US_PER_DAY


def compute_features(
    events: pl.LazyFrame,
    spine: pl.LazyFrame,
    entities: pl.LazyFrame | None,
    config: FeatureConfig,
    categories: Categories,
) -> pl.LazyFrame:
    """One row per spine row: the spine's columns, then the feature columns (``feature_columns`` order).

    Only events with ``event_ts < snapshot_ts`` of the row are used. Independent of any label column
    (other spine columns are passed through), so batch scoring calls it with a label-less spine.
    Rows are sorted by (snapshot_ts, entity_id).

    The events are read once, lazily, by a streaming ``group_by`` that runs when this is called; its
    result (per-entity, per-bucket partials: at most spine entities x buckets rows) and the spine are
    held in memory for the lookups, and the returned frame joins the entity attributes lazily.
    """
    events = events.with_columns(pl.col(EVENT_TS).cast(pl.Datetime("us")))
    spine = spine.with_columns(pl.col(ENTITY).cast(pl.String), pl.col(SNAPSHOT).cast(pl.Datetime("us")))
    spine_columns = spine.collect_schema().names()
    spine_rows = spine.collect(engine="streaming")
    if spine_rows.height == 0:
        return _finalise(
            spine.with_columns(code=pl.lit(None, pl.UInt32)),
            False,
            spine_columns,
            entities,
            config,
            categories,
        )
    snapshots = spine_rows[SNAPSHOT].unique().sort().to_list()
    windows = config.windows_days
    numeric = config.numeric_columns
    cats = {col: category_features(col, categories.get(col, [])) for col in config.categorical_columns}

    # Bucket boundaries: each snapshot instant and each window start; bucket i = [B[i], B[i+1]), and
    # bucket -1 is everything before B[0]. Every window [s - w, s) is a run of whole buckets.
    boundaries = sorted({s - timedelta(days=w) for s in snapshots for w in windows} | set(snapshots))
    position = {b: i for i, b in enumerate(boundaries)}
    stride = len(boundaries) + 1  # buckets per entity, bucket -1 included

    # Entity codes: the rank of the entity among the sorted spine entities (so sorting by code is sorting
    # by entity_id); events of entities outside the spine are dropped by the join.
    codes = spine_rows.select(pl.col(ENTITY).unique().sort()).with_row_index("code")

    scale = 10**config.numeric_decimals
    additive: list[pl.Expr] = [pl.len().cast(pl.Int64).alias("n")]
    for col in numeric:
        # fixed point: integer sums are exact and do not depend on the (parallel) summation order
        fixed = (pl.col(col).cast(pl.Float64) * scale).round().cast(pl.Int64)
        additive += [
            fixed.sum().alias(f"{col}__sum"),
            pl.col(col).count().cast(pl.Int64).alias(f"{col}__cnt"),
        ]
    for col, pairs in cats.items():
        additive += [(pl.col(col) == value).sum().cast(pl.Int64).alias(stem) for value, stem in pairs]
    maxima = [pl.col(col).cast(pl.Float64).max().alias(f"{col}__max") for col in numeric]
    bucket = pl.lit(pl.Series(boundaries, dtype=pl.Datetime("us"))).search_sorted(
        pl.col(EVENT_TS), side="right"
    )

    # The one pass over the events (streaming), then partials sorted by (entity, bucket) = by `key`.
    started = time.perf_counter()
    partials = (
        events.filter(pl.col(EVENT_TS) < snapshots[-1])
        .with_columns(bucket.cast(pl.Int64).alias("bucket"))  # = bucket index + 1, in [0, stride)
        .group_by(ENTITY, "bucket")
        .agg(
            *additive,
            *maxima,
            pl.col(EVENT_TS).min().alias("first_ts"),
            pl.col(EVENT_TS).max().alias("last_ts"),
        )
        .join(codes.lazy(), on=ENTITY, how="inner")
        .select(
            (pl.col("code").cast(pl.Int64) * stride + pl.col("bucket")).alias("key"),
            pl.exclude(ENTITY, "code", "bucket"),
        )
        .collect(engine="streaming")
        .sort("key")
    )
    log.info(
        "aggregated the events into %s (entity, bucket) partials in %.1f s",
        f"{partials.height:,}",
        time.perf_counter() - started,
    )
    additive_names = [e.meta.output_name() for e in additive]
    for col in numeric:  # the running totals below are int64 across all entities: refuse to overflow
        magnitude = partials[f"{col}__sum"].cast(pl.Float64).abs().sum()
        if magnitude >= 2**62:
            raise BuildError(
                f"numeric column {col!r}: total magnitude {magnitude / scale:.3g} is too large for fixed point "
                f"with {config.numeric_decimals} decimals; lower FeatureConfig.numeric_decimals"
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

    def rows_before(offset_days: int | None) -> np.ndarray:
        if offset_days is None:  # the entity's first row
            target = entity_base
        else:
            first_bucket = {s: position[s - timedelta(days=offset_days)] + 1 for s in snapshots}
            target = entity_base + lookup[SNAPSHOT].replace_strict(first_bucket, return_dtype=pl.Int64)
        return np.searchsorted(sorted_keys, target.to_numpy(), side="left").astype(np.int64)

    start, end = rows_before(None), rows_before(0)
    begins = {w: rows_before(w) for w in windows}
    has_history = end > start

    columns: dict[str, Any] = {name: lookup[name] for name in lookup.columns}
    # exact integer prefix sums (row 0 = nothing yet), gathered at the run ends: whole-frame gathers
    # and arithmetic run on all cores
    prefix = pl.concat(
        [
            pl.DataFrame([pl.Series(name, [0], pl.Int64) for name in additive_names]),
            partials.select(pl.col(additive_names).cum_sum()),
        ]
    )
    at_end = prefix[pl.Series(end)]
    for w in windows:
        totals = at_end - prefix[pl.Series(begins[w])]
        columns.update({_window_name(name, w): totals[name] for name in additive_names})
    columns["events_total"] = at_end["n"] - prefix["n"].gather(start)
    for col in numeric:
        values = partials[f"{col}__max"].fill_null(np.nan).to_numpy()
        for w in windows:
            columns[f"{col}_max_{w}d"] = pl.Series(range_max(values, begins[w], end), nan_to_null=True)
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
    features = pl.DataFrame(columns)
    for col in numeric:
        for w in windows:
            features = features.with_columns((pl.col(f"{col}_sum_{w}d") / scale).alias(f"{col}_sum_{w}d"))
    return _finalise(features.lazy(), True, spine_columns, entities, config, categories, codes)


def range_max(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``nanmax(values[lo[i]:hi[i]])`` for every i, NaN for an empty range, in one vectorised pass.

    ``fmax.reduceat`` over the interleaved bounds (lo0, hi0, lo1, hi1, ...) reduces each [lo, hi) and, in
    between, each [hi, next lo) (discarded); with the queries sorted that is about one sweep of the array.
    """
    padded = np.append(values.astype(np.float64), np.nan)  # so that hi == len(values) is a valid index
    bounds = np.empty(2 * len(lo), dtype=np.intp)
    bounds[0::2], bounds[1::2] = lo, hi
    out = np.fmax.reduceat(padded, bounds)[0::2]
    out[hi <= lo] = np.nan  # reduceat gives values[lo] for an empty range
    return out


def _window_name(partial: str, w: int) -> str:
    if partial == "n":
        return f"events_{w}d"
    if partial.endswith("__sum"):
        return f"{partial.removesuffix('__sum')}_sum_{w}d"
    return f"{partial}_{w}d"  # value counts, and the helper "<col>__cnt_<w>d"


@dataclass(frozen=True)
class Feature:
    """One output column: its expression (over the windowed partials) and the range its definition guarantees."""

    name: str
    expr: pl.Expr
    bounds: Bounds


def feature_definitions(
    config: FeatureConfig,
    categories: Categories,
    entity_schema: pl.Schema | None,
    windowed: Callable[[str, pl.DataType], pl.Expr] = lambda name, dtype: pl.col(name).cast(dtype),
) -> list[Feature]:
    """Every feature, in output order. ``windowed(name, dtype)`` gives a windowed partial column.

    The one place a feature is defined: :func:`compute_features` selects the expressions and
    :func:`feature_bounds` records the bounds in the snapshot manifest.
    """
    features: list[Feature] = []

    def add(name: str, expr: pl.Expr, bounds: Bounds) -> None:
        features.append(Feature(name, expr.alias(name), bounds))

    cats = {col: category_features(col, categories.get(col, [])) for col in config.categorical_columns}
    for w in config.windows_days:
        add(f"events_{w}d", windowed(f"events_{w}d", pl.Int64).fill_null(0), COUNT)
        for col in config.numeric_columns:
            total = windowed(f"{col}_sum_{w}d", pl.Float64).fill_null(0.0)
            count = windowed(f"{col}__cnt_{w}d", pl.Int64).fill_null(0)
            mean = pl.when(count > 0).then(total / count).otherwise(0.0)
            add(f"{col}_sum_{w}d", total, UNBOUNDED)
            add(f"{col}_mean_{w}d", mean, UNBOUNDED)
            add(f"{col}_max_{w}d", windowed(f"{col}_max_{w}d", pl.Float64).fill_null(0.0), UNBOUNDED)
        for pairs in cats.values():
            for _, stem in pairs:
                add(f"{stem}_{w}d", windowed(f"{stem}_{w}d", pl.Int64).fill_null(0), COUNT)

    snapshot = pl.col(SNAPSHOT)
    add("events_total", windowed("events_total", pl.Int64).fill_null(0), COUNT)
    add("days_since_last_event", _days(snapshot - pl.col("last_ts")).fill_null(NEVER_DAYS), COUNT)
    add("days_since_first_event", _days(snapshot - pl.col("first_ts")).fill_null(UNKNOWN_DAYS), COUNT)

    recent, base = config.trend_recent_days, config.trend_base_days
    if {recent, base} <= set(config.windows_days):
        n_recent = windowed(f"events_{recent}d", pl.Float64).fill_null(0.0)
        n_before = windowed(f"events_{base}d", pl.Float64).fill_null(0.0) - n_recent
        # ratio of daily event rates, add-one smoothed on the recent count (and the same pseudo-rate on
        # the earlier one) so that "no events at all" is 1 (flat) and it never divides by zero
        expected_recent = n_before * recent / (base - recent)
        trend = (n_recent + 1.0) / (expected_recent + 1.0)
        add(f"events_trend_{recent}d_vs_prior_{base - recent}d", trend, POSITIVE)

    for col, dtype in (entity_schema or {}).items():
        if col == ENTITY:
            continue
        value_of = pl.col(_attribute(col))
        if dtype.is_temporal():
            days = _days(snapshot - value_of.cast(pl.Datetime("us"))).fill_null(UNKNOWN_DAYS)
            add(f"days_since_{col.removesuffix('_ts')}", days, COUNT)
        elif dtype in (pl.String, pl.Categorical, pl.Enum):
            for value, stem in category_features(col, categories.get(f"entity.{col}", [])):
                add(stem, (value_of.cast(pl.String) == value).fill_null(False).cast(pl.Int8), ONE_HOT)
        elif dtype.is_numeric() or dtype == pl.Boolean:
            add(col, value_of.cast(pl.Float64).fill_null(0.0), UNBOUNDED)
    return features


def feature_bounds(
    config: FeatureConfig, categories: Categories, entity_schema: pl.Schema | None
) -> dict[str, Bounds]:
    """The declared range of every feature column (what the features gate checks)."""
    return {f.name: f.bounds for f in feature_definitions(config, categories, entity_schema)}


def _attribute(column: str) -> str:
    # entity attributes are joined under these names so one can never clash with a spine or feature column
    return f"__entity_{column}"


def _finalise(
    out: pl.LazyFrame,
    has_events: bool,
    spine_columns: list[str],
    entities: pl.LazyFrame | None,
    config: FeatureConfig,
    categories: Categories,
    codes: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """Spine columns + derived features with their defaults, in order; rows keep the order of ``out``."""
    if not has_events:  # empty spine: keep the schema
        out = out.with_columns(
            pl.lit(None, pl.Datetime("us")).alias("first_ts"),
            pl.lit(None, pl.Datetime("us")).alias("last_ts"),
        )

    def windowed(name: str, dtype: pl.DataType) -> pl.Expr:
        return pl.col(name).cast(dtype) if has_events else pl.lit(None, dtype).alias(name)

    entity_schema = None
    if entities is not None:
        entity_schema = entities.collect_schema()
        attributes = [c for c in entity_schema.names() if c != ENTITY]
        attribute_rows = (
            entities.select(ENTITY, *attributes)
            .unique(ENTITY, keep="first")
            .rename({c: _attribute(c) for c in attributes})
        )
        if codes is not None:  # join on the integer entity code, cheaper than on the string id
            attribute_rows = attribute_rows.join(codes.lazy(), on=ENTITY, how="inner").drop(ENTITY)
        out = out.join(
            attribute_rows, on="code" if codes is not None else ENTITY, how="left", maintain_order="left"
        )
    features = feature_definitions(config, categories, entity_schema, windowed)
    return out.select(*spine_columns, *(f.expr for f in features))


def feature_columns(frame: pl.DataFrame | pl.LazyFrame) -> list[str]:
    """The feature columns of a ``compute_features`` result, in order (everything but the spine)."""
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    return [c for c in names if c not in (ENTITY, SNAPSHOT, LABEL)]

"""The same features as ``features.engineering.compute_features``, written the straightforward pandas way.

A baseline for the benchmark and an independent re-implementation for the equality check: for each
snapshot date, mask the events before it, group by entity, merge onto that date's spine rows. Idiomatic
(vectorised masks, ``groupby``/``agg``, ``merge``), neither deliberately slow nor hand-optimised.

    python bench/pandas_reference.py EXTRACT_DIR OUT.parquet
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from features.engineering.compute import NEVER_DAYS, UNKNOWN_DAYS, FeatureConfig, category_features
from mlcontract.names import ENTITY, EVENT_TS, SNAPSHOT


def fit_categories(
    events: pd.DataFrame, entities: pd.DataFrame | None, config: FeatureConfig, before
) -> dict[str, list[str]]:
    """Top-N values by frequency (ties by value), listed sorted: the same rule as the polars build."""

    def top(values: pd.Series, limit: int) -> list[str]:
        counts = values.dropna().astype(str).value_counts().rename_axis("value").reset_index(name="n")
        counts = counts.sort_values(["n", "value"], ascending=[False, True]).head(limit)
        return sorted(counts["value"].tolist())

    past = events[events[EVENT_TS] < before]
    vocab = {col: top(past[col], config.max_categories) for col in config.categorical_columns}
    if entities is not None:
        for col in entities.columns:
            if col != ENTITY and (
                entities[col].dtype == object or pd.api.types.is_string_dtype(entities[col])
            ):
                vocab[f"entity.{col}"] = top(entities[col], config.entity_max_categories)
    return vocab


def _window_features(window: pd.DataFrame, w: int, config: FeatureConfig, categories) -> pd.DataFrame:
    grouped = window.groupby(ENTITY)
    named = {f"events_{w}d": (EVENT_TS, "size")}
    for col in config.numeric_columns:
        named |= {
            f"{col}_sum_{w}d": (col, "sum"),
            f"{col}__cnt_{w}d": (col, "count"),
            f"{col}_max_{w}d": (col, "max"),
        }
    out = grouped.agg(**named)
    for col in config.categorical_columns:
        pairs = category_features(col, categories.get(col, []))
        counts = window.groupby([ENTITY, col]).size().unstack(fill_value=0)
        counts = counts.reindex(columns=[value for value, _ in pairs], fill_value=0)
        counts.columns = [f"{stem}_{w}d" for _, stem in pairs]
        out = out.join(counts)
    return out


def compute_features(
    events: pd.DataFrame,
    spine: pd.DataFrame,
    entities: pd.DataFrame | None,
    config: FeatureConfig,
    categories: dict[str, list[str]],
) -> pd.DataFrame:
    per_snapshot = []
    for snapshot, rows in spine.groupby(SNAPSHOT, sort=True):
        past = events[events[EVENT_TS] < snapshot]
        lifetime = past.groupby(ENTITY).agg(
            events_total=(EVENT_TS, "size"), first_ts=(EVENT_TS, "min"), last_ts=(EVENT_TS, "max")
        )
        merged = rows.merge(lifetime, left_on=ENTITY, right_index=True, how="left")
        for w in config.windows_days:
            window = past[past[EVENT_TS] >= snapshot - timedelta(days=w)]
            merged = merged.merge(
                _window_features(window, w, config, categories), left_on=ENTITY, right_index=True, how="left"
            )
        per_snapshot.append(merged)
    frame = pd.concat(per_snapshot, ignore_index=True)

    day = pd.Timedelta(days=1)
    out = frame[list(spine.columns)].copy()
    for w in config.windows_days:
        out[f"events_{w}d"] = frame[f"events_{w}d"].fillna(0).astype("int64")
        for col in config.numeric_columns:
            total = frame[f"{col}_sum_{w}d"].fillna(0.0)
            count = frame[f"{col}__cnt_{w}d"].fillna(0)
            out[f"{col}_sum_{w}d"] = total
            out[f"{col}_mean_{w}d"] = np.where(count > 0, total / count.where(count > 0, 1), 0.0)
            out[f"{col}_max_{w}d"] = frame[f"{col}_max_{w}d"].fillna(0.0)
        for col in config.categorical_columns:
            for _, stem in category_features(col, categories.get(col, [])):
                out[f"{stem}_{w}d"] = frame[f"{stem}_{w}d"].fillna(0).astype("int64")
    out["events_total"] = frame["events_total"].fillna(0).astype("int64")
    out["days_since_last_event"] = ((frame[SNAPSHOT] - frame["last_ts"]) / day).fillna(NEVER_DAYS)
    out["days_since_first_event"] = ((frame[SNAPSHOT] - frame["first_ts"]) / day).fillna(UNKNOWN_DAYS)
    recent, base = config.trend_recent_days, config.trend_base_days
    if {recent, base} <= set(config.windows_days):
        n_recent = out[f"events_{recent}d"].astype(float)
        n_before = out[f"events_{base}d"] - n_recent
        out[f"events_trend_{recent}d_vs_prior_{base - recent}d"] = (n_recent + 1.0) / (
            n_before * recent / (base - recent) + 1.0
        )

    if entities is not None:
        attributes = [c for c in entities.columns if c != ENTITY]
        joined = out[[ENTITY, SNAPSHOT]].merge(
            entities.drop_duplicates(ENTITY).rename(columns={c: f"__entity_{c}" for c in attributes}),
            on=ENTITY,
            how="left",
        )
        for col in attributes:
            values = joined[f"__entity_{col}"]
            if pd.api.types.is_datetime64_any_dtype(values):
                days = (joined[SNAPSHOT] - values) / day
                out[f"days_since_{col.removesuffix('_ts')}"] = days.fillna(UNKNOWN_DAYS).to_numpy()
            elif values.dtype == object or pd.api.types.is_string_dtype(values):
                for value, stem in category_features(col, categories.get(f"entity.{col}", [])):
                    out[stem] = (values == value).fillna(False).astype("int8").to_numpy()
            else:
                out[col] = values.astype(float).fillna(0.0).to_numpy()

    return out.sort_values([SNAPSHOT, ENTITY], kind="stable").reset_index(drop=True)


def run(extract_dir: str, out_path: str) -> dict[str, float]:
    started = time.perf_counter()
    extract = Path(extract_dir)
    events = pd.read_parquet(extract / "events")
    spine = pd.read_parquet(extract / "labels.parquet")
    entities_path = extract / "entities.parquet"
    entities = pd.read_parquet(entities_path) if entities_path.exists() else None
    read = time.perf_counter()
    config = FeatureConfig()
    categories = fit_categories(events, entities, config, before=spine[SNAPSHOT].max())
    features = compute_features(events, spine, entities, config, categories)
    computed = time.perf_counter()
    features.to_parquet(out_path, index=False)
    return {
        "read_seconds": read - started,
        "compute_seconds": computed - read,
        "seconds": time.perf_counter() - started,
        "rows": len(features),
    }


if __name__ == "__main__":
    print(run(sys.argv[1], sys.argv[2]))

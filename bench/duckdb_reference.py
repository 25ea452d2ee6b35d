"""The inferred-spec features written as DuckDB SQL: point-in-time window aggregates over the events.

The same definitions as ``features.engineering.compute`` (its module docstring), for the spec and the
category vocabulary the polars build used (read from its snapshot manifest): a spine row
``(entity_id, snapshot_ts)`` joins its entity's events strictly before ``snapshot_ts``, and each feature is
a conditional aggregate (``FILTER (WHERE event_ts >= snapshot_ts - w days)``) over that history — the
way the features are written in SQL by hand. Rows without history get the build's defaults.

    run(extract_dir, build_dir, out_path) -> {"seconds": ..., "rows": ..., "features": ...}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

US_PER_DAY = 86_400_000_000


@dataclass
class Feature:
    name: str
    aggregate: str | None  # SQL aggregate over the history (None: computed in the outer select)
    outer: str  # SQL in the outer select (over the aggregated row, nulls for rows without history)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def feature_sql(
    spec: dict,
    categories: dict[str, list[str]],
    events: str,
    spine: str,
    entities: str | None,
    never_days: float,
    unknown_days: float,
    decimals: int,
) -> tuple[str, list[str]]:
    """The query (its result: entity_id, snapshot_ts, label, features) and the feature names."""
    from features.engineering.compute import category_features

    features: list[Feature] = []

    def add(name: str, aggregate: str | None, default: str = "0", outer: str | None = None) -> None:
        features.append(Feature(name, aggregate, outer or f"coalesce({_quote(name)}, {default})"))

    def within(w: int) -> str:
        return f"age_us <= {w * US_PER_DAY}"  # event_ts >= snapshot_ts - w days

    def numeric_value(col: str, column: dict) -> str:
        if column["kind"] == "timestamp":
            return f"((epoch_us(event_ts) - epoch_us(CAST({_quote(col)} AS TIMESTAMP))) / {US_PER_DAY}.0)"
        return f"CAST({_quote(col)} AS DOUBLE)"

    def stem(col: str, column: dict) -> str:
        return f"{col}_lag_days" if column["kind"] == "timestamp" else col

    events_spec: dict[str, dict] = spec.get("events", {})
    windows = spec.get("windows_days", [])
    for w in windows:
        add(f"events_{w}d", f"count(*) FILTER (WHERE {within(w)})")
        for col, column in events_spec.items():
            kind, aggs = column["kind"], set(column.get("aggregations") or [])
            q = _quote(col)
            if kind in ("numeric", "timestamp"):
                value = numeric_value(col, column)
                rounded = f"round({value}, {decimals})"
                cond = f"WHERE {within(w)}"
                for agg, sql in (
                    ("sum", f"sum({rounded})"),
                    ("mean", f"avg({rounded})"),
                    ("min", f"min({value})"),
                    ("max", f"max({value})"),
                    ("std", f"stddev_samp({rounded})"),
                ):
                    if agg in aggs:
                        add(f"{stem(col, column)}_{agg}_{w}d", f"{sql} FILTER ({cond})")
            elif kind == "boolean":
                true = f"count(*) FILTER (WHERE {within(w)} AND CAST({q} AS BOOLEAN))"
                known = f"count({q}) FILTER (WHERE {within(w)})"
                if "sum" in aggs:
                    add(f"{col}_sum_{w}d", true)
                if "mean" in aggs:
                    add(f"{col}_mean_{w}d", f"{true} / nullif({known}, 0)")
            if kind == "categorical" and aggs & {"count", "share"}:
                known = f"count({q}) FILTER (WHERE {within(w)})"
                for value, name in category_features(col, categories.get(col, [])):
                    matches = f"count(*) FILTER (WHERE {within(w)} AND CAST({q} AS VARCHAR) = {_text(value)})"
                    if "count" in aggs:
                        add(f"{name}_{w}d", matches)
                    if "share" in aggs:
                        add(f"{name}_share_{w}d", f"{matches} / nullif({known}, 0)")
            if "distinct_count" in aggs:
                add(
                    f"{col}_distinct_{w}d", f"count(DISTINCT CAST({q} AS VARCHAR)) FILTER (WHERE {within(w)})"
                )
    if events_spec:
        add("events_total", "count(*)")
        for col, column in events_spec.items():
            if "last" in (column.get("aggregations") or []) and column["kind"] in ("numeric", "timestamp"):
                # the latest non-null value; ties (same event_ts) by the largest value
                value = f"round({numeric_value(col, column)}, {decimals})"
                add(
                    f"{stem(col, column)}_last",
                    f"max({{'t': event_ts, 'v': {value}}}) FILTER (WHERE {value} IS NOT NULL).v",
                )
    if spec.get("recency"):
        add(
            "days_since_last_event",
            f"(epoch_us(any_value(snapshot_ts)) - epoch_us(max(event_ts))) / {US_PER_DAY}.0",
            default=repr(float(never_days)),
        )
    if spec.get("tenure"):
        add(
            "days_since_first_event",
            f"(epoch_us(any_value(snapshot_ts)) - epoch_us(min(event_ts))) / {US_PER_DAY}.0",
            default=repr(float(unknown_days)),
        )

    aggregates = {f.name: f.aggregate for f in features if f.aggregate}  # plus hidden ones the ratios need
    for recent, base in spec.get("ratios", []):
        suffix = f"trend_{recent}d_vs_prior_{base - recent}d"
        for w in (recent, base):
            aggregates.setdefault(f"__n_{w}", f"count(*) FILTER (WHERE {within(w)})")
        n_recent, n_base = f"coalesce({_quote(f'__n_{recent}')}, 0)", f"coalesce({_quote(f'__n_{base}')}, 0)"
        features.append(
            Feature(
                f"events_{suffix}",
                None,
                f"({n_recent} + 1.0) / (({n_base} - {n_recent}) * {recent} / {base - recent} + 1.0)",
            )
        )
        for col, column in events_spec.items():
            if column["kind"] == "numeric" and "sum" in (column.get("aggregations") or []):
                rounded = f"round({numeric_value(col, column)}, {decimals})"
                for w in (recent, base):
                    aggregates.setdefault(f"__s_{col}_{w}", f"sum({rounded}) FILTER (WHERE {within(w)})")
                s_recent = f"coalesce({_quote(f'__s_{col}_{recent}')}, 0)"
                s_base = f"coalesce({_quote(f'__s_{col}_{base}')}, 0)"
                s_before = f"(({s_base} - {s_recent}) * {recent} / {base - recent})"
                features.append(
                    Feature(f"{col}_sum_{suffix}", None, f"({_slog(s_recent)} - {_slog(s_before)})")
                )

    attribute_columns: list[str] = []
    for col, use in (spec.get("entity_attributes") or {}).items():
        kind, q = use["use"], f"a.{_quote(col)}"
        if entities is None or kind == "ignore":
            continue
        attribute_columns.append(col)
        if kind == "days_since":
            days = f"(epoch_us(l.snapshot_ts) - epoch_us(CAST({q} AS TIMESTAMP))) / {US_PER_DAY}.0"
            features.append(
                Feature(f"days_since_{col.removesuffix('_ts')}", None, f"coalesce({days}, {unknown_days!r})")
            )
        elif kind == "one_hot":
            for value, name in category_features(col, categories.get(f"entity.{col}", [])):
                features.append(
                    Feature(
                        name, None, f"coalesce(CAST(CAST({q} AS VARCHAR) = {_text(value)} AS INTEGER), 0)"
                    )
                )
        elif kind == "boolean":
            features.append(Feature(col, None, f"coalesce(CAST(CAST({q} AS BOOLEAN) AS INTEGER), 0)"))
        else:
            features.append(Feature(col, None, f"coalesce(CAST({q} AS DOUBLE), 0)"))

    aggregate_list = ",\n    ".join(f"{sql} AS {_quote(name)}" for name, sql in aggregates.items())
    outer = ",\n  ".join(f"{f.outer} AS {_quote(f.name)}" for f in features)
    entity_join = (
        f"LEFT JOIN read_parquet({_text(entities)}) a ON a.entity_id = l.entity_id"
        if attribute_columns
        else ""
    )
    sql = f"""
WITH spine AS (SELECT DISTINCT entity_id, snapshot_ts FROM read_parquet({_text(spine)})),
history AS (
  SELECT s.snapshot_ts, e.*, epoch_us(s.snapshot_ts) - epoch_us(e.event_ts) AS age_us
  FROM spine s JOIN read_parquet({_text(events)}) e ON e.entity_id = s.entity_id AND e.event_ts < s.snapshot_ts
),
aggregated AS (
  SELECT entity_id, snapshot_ts,
    {aggregate_list}
  FROM history GROUP BY entity_id, snapshot_ts
)
SELECT l.entity_id, l.snapshot_ts, l.label,
  {outer}
FROM read_parquet({_text(spine)}) l
LEFT JOIN aggregated g ON g.entity_id = l.entity_id AND g.snapshot_ts = l.snapshot_ts
{entity_join}
"""
    return sql, [f.name for f in features]


def _slog(value: str) -> str:
    return f"(sign({value}) * ln(1 + abs({value})))"


def run(extract_dir: str, build_dir: str, out_path: str, threads: int | None = None) -> dict:
    """Compute the build's features with DuckDB (spec and vocabulary from the build's snapshot manifest)
    and write them to ``out_path``; time measured around the query and the write."""
    import duckdb
    from features.engineering.compute import NEVER_DAYS, UNKNOWN_DAYS
    from mlcontract.manifests import BuildManifest, SnapshotManifest

    build = BuildManifest.read(build_dir)
    snapshot = SnapshotManifest.read(build.snapshot_uri)
    spec = build.feature_config
    entities = Path(extract_dir) / "entities.parquet"
    sql, names = feature_sql(
        spec,
        snapshot.categories,
        str(Path(extract_dir) / "events" / "*.parquet"),
        str(Path(extract_dir) / "labels.parquet"),
        str(entities) if entities.exists() else None,
        NEVER_DAYS,
        UNKNOWN_DAYS,
        int(spec.get("numeric_decimals", 6)),
    )
    connection = duckdb.connect()
    if threads:
        connection.execute(f"SET threads = {int(threads)}")
    connection.execute("SET preserve_insertion_order = false")  # row order is not part of the result
    started = time.perf_counter()
    connection.execute(f"COPY ({sql}) TO {_text(out_path)} (FORMAT parquet)")
    seconds = time.perf_counter() - started
    rows = connection.execute(f"SELECT count(*) FROM read_parquet({_text(out_path)})").fetchone()[0]
    missing = sorted(set(build.feature_columns) - set(names))
    return {
        "seconds": seconds,
        "rows": rows,
        "features": len(names),
        "not_in_sql": missing,
        "duckdb": duckdb.__version__,
    }

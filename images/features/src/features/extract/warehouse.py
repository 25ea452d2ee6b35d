"""Warehouse → canonical raw snapshot (parquet), streamed batch by batch.

The source is configuration: a table or a SQL query for events and labels, an optional entities table,
and the names of the entity key, timestamp, snapshot and label columns. Whatever the source calls them,
the output uses the canonical names of ``docs/steps.md`` (``entity_id``, ``event_ts``, ``snapshot_ts``,
``label``). Rows are read with a server-side cursor (``stream_results``) and written as
``events/part-NNNNN.parquet``, one file per batch, so the table is never held in memory. Output order
is total (entity, timestamp, then every other column), so identical warehouse content gives identical
files and the same ``content_hash``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import sqlalchemy as sa

from features import io

log = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$"
DEFAULT_BATCH_ROWS = 500_000


class ExtractError(ValueError):
    """Bad extract configuration or source: the message names the table, column or option."""


def check_identifiers(options: Any, names: tuple[str, ...]) -> None:
    """Table and column options go into SQL as identifiers: accept only plain ones (no injection)."""
    for name in names:
        value = getattr(options, name)
        if value and not IDENTIFIER.match(value):
            raise ExtractError(
                f"--{name.replace('_', '-')} {value!r} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_.]*)"
            )


@dataclass(frozen=True)
class ExtractSource:
    """Where the raw data lives. Exactly one of table/query for events and for labels."""

    events_table: str | None = "events"
    events_query: str | None = None
    labels_table: str | None = "churn_labels"
    labels_query: str | None = None
    entities_table: str | None = None
    entity_key: str = "customer_id"
    timestamp_column: str = "event_ts"
    snapshot_column: str = "snapshot_ts"
    label_column: str = "churned"

    def __post_init__(self) -> None:
        for kind in ("events", "labels"):
            table, query = getattr(self, f"{kind}_table"), getattr(self, f"{kind}_query")
            if bool(table) == bool(query):
                raise ExtractError(f"give exactly one of --{kind}-table or --{kind}-query")
        check_identifiers(
            self,
            ("events_table", "labels_table", "entities_table", "entity_key", "timestamp_column",
             "snapshot_column", "label_column"),
        )

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v}


def mask_uri(uri: str) -> str:
    """The URI with its password hidden, for logs."""
    try:
        return sa.engine.make_url(uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never let a log line leak or crash on an odd URI
        return "<warehouse>"


def _as_naive_utc(value: date | datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


class _Warehouse:
    def __init__(self, uri: str):
        self.engine = sa.create_engine(uri)
        self.preparer = self.engine.dialect.identifier_preparer
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    def quote(self, identifier: str) -> str:
        return ".".join(self.preparer.quote(part) for part in identifier.split("."))

    def relation(self, kind: str, table: str | None, query: str | None) -> str:
        """``FROM`` target for a table or a query, after checking that it exists and answers."""
        if table:
            schema, _, name = table.rpartition(".")
            if not sa.inspect(self.engine).has_table(name, schema=schema or None):
                raise ExtractError(f"{kind} table {table!r} not found in the warehouse")
            return self.quote(table)
        assert query is not None
        return f"({query.strip().rstrip(';')})"

    def columns(self, kind: str, relation: str) -> list[str]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(sa.text(f"SELECT * FROM {relation} AS src WHERE 1 = 0")).keys())
        except sa.exc.DBAPIError as error:
            raise ExtractError(f"{kind} source failed: {error.orig}") from error

    def cutoff_param(self, cutoff: datetime) -> Any:
        # SQLite keeps timestamps as text; compare on the date prefix (one day past the cutoff), which
        # holds for every ISO layout, and apply the exact cutoff after parsing.
        if self.is_sqlite:
            return (cutoff + timedelta(days=1)).strftime("%Y-%m-%d")
        return cutoff

    def stream(self, sql: str, params: dict[str, Any], batch_rows: int) -> Iterator[tuple[list[str], list]]:
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                sa.text(sql), params
            )
            keys = list(result.keys())
            for rows in result.partitions(batch_rows):
                yield keys, rows


def _require(kind: str, available: list[str], wanted: list[str], options: dict[str, str]) -> None:
    for column in wanted:
        if column not in available:
            option = options.get(column, "")
            raise ExtractError(
                f"{kind} source has no column {column!r}{f' (from {option})' if option else ''}; "
                f"columns are: {', '.join(available)}"
            )


def _parse_timestamps(series: pl.Series, column: str) -> pl.Series:
    """Any timestamp representation (datetime, tz-aware, date, ISO text) → naive UTC Datetime(us)."""
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return series.cast(pl.Datetime("us"))
    if dtype == pl.Date:
        return series.cast(pl.Datetime("us"))
    if dtype == pl.Null:
        return series.cast(pl.Datetime("us"))
    if dtype == pl.Utf8:
        text = series.str.strip_chars().str.replace("T", " ", literal=True)
        aware = text.str.contains(r"(Z|[+-]\d{2}:?\d{2})$")
        if aware.any():
            parsed = (
                text.str.replace(r"Z$", "+00:00")
                .str.to_datetime("%Y-%m-%d %H:%M:%S%.f%z", strict=False, time_unit="us")
                .dt.convert_time_zone("UTC")
                .dt.replace_time_zone(None)
            )
        else:
            with_time = text.str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us")
            minutes = text.str.to_datetime("%Y-%m-%d %H:%M", strict=False, time_unit="us")
            day = text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
            parsed = pl.select(pl.coalesce(with_time, minutes, day)).to_series()
        bad = parsed.is_null() & series.is_not_null()
        if bad.any():
            example = series.filter(bad)[0]
            raise ExtractError(f"column {column!r} has a value that is not a timestamp: {example!r}")
        return parsed.alias(series.name)
    raise ExtractError(f"column {column!r} has type {dtype}, expected a timestamp")


class _Canonicaliser:
    """Turns raw batches into canonical frames with one schema, decided by the first non-empty batch."""

    def __init__(self, renames: dict[str, str], timestamps: set[str], is_sqlite: bool, label: str | None):
        self.renames = renames
        self.timestamps = timestamps
        self.is_sqlite = is_sqlite
        self.label = label
        self.schema: dict[str, pl.DataType] | None = None
        self.text_timestamps: set[str] = set()

    def __call__(self, keys: list[str], rows: list) -> pl.DataFrame:
        frame = pl.DataFrame(
            [list(column) for column in zip(*rows)] if rows else [[] for _ in keys],
            schema=keys,
            orient="col",
            strict=False,
            infer_schema_length=None,
        ).rename(self.renames)
        if self.schema is None and self.is_sqlite:
            # SQLite returns timestamps as text: recognise ISO text columns once, on the first batch
            for name, dtype in frame.schema.items():
                if dtype == pl.Utf8 and name != "entity_id" and name not in self.timestamps:
                    sample = frame[name].drop_nulls().head(1000)
                    if sample.len() and sample.str.contains(_ISO_TIMESTAMP).all():
                        self.text_timestamps.add(name)
        columns = []
        for name, dtype in frame.schema.items():
            series = frame[name]
            if name == "entity_id":
                series = series.cast(pl.Utf8)
            elif name in self.timestamps or name in self.text_timestamps:
                series = _parse_timestamps(series, name)
            elif name == self.label:
                series = series.cast(pl.Int8, strict=False)
            elif isinstance(dtype, pl.Decimal):
                series = series.cast(pl.Float64)
            elif isinstance(dtype, pl.Datetime):
                series = _parse_timestamps(series, name)
            columns.append(series)
        frame = pl.DataFrame(columns)
        if self.schema is None:
            if frame.height:
                self.schema = dict(frame.schema)
            return frame
        return frame.cast(self.schema, strict=False)  # type: ignore[arg-type]


class _PartWriter:
    """Writes ``part-NNNNN.parquet`` files into a fresh directory, swapped in place of the old one."""

    def __init__(self, directory_uri: str):
        self.final = directory_uri
        self.fs, self.final_path = io.filesystem(directory_uri)
        self.local = io.is_local(self.fs)
        if self.local:
            parent, name = os.path.split(self.final_path.rstrip("/"))
            self.staging = os.path.join(parent, f".{name}.{uuid.uuid4().hex}.tmp")
            os.makedirs(self.staging)
        else:
            if self.fs.exists(self.final_path):
                self.fs.rm(self.final_path, recursive=True)
            self.staging = self.final_path
        self.names: list[str] = []

    def write(self, frame: pl.DataFrame) -> None:
        name = f"part-{len(self.names):05d}.parquet"
        with self.fs.open(f"{self.staging}/{name}", "wb") as handle:
            frame.write_parquet(handle, compression="zstd", statistics=True)
        self.names.append(name)

    def commit(self) -> list[str]:
        if self.local:
            trash = None
            if os.path.exists(self.final_path):
                trash = f"{self.staging}.old"
                os.replace(self.final_path, trash)
            os.replace(self.staging, self.final_path)
            if trash:
                shutil.rmtree(trash, ignore_errors=True)
        return [io.join_uri(self.final, name) for name in self.names]

    def abort(self) -> None:
        if self.local:
            shutil.rmtree(self.staging, ignore_errors=True)


def _write_single(uri: str, frames: Iterator[pl.DataFrame]) -> int:
    """Stream frames into one parquet file (temp file + rename on local paths)."""
    fs, path = io.filesystem(uri)
    local = io.is_local(fs)
    target = path
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        target = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    rows = 0
    writer = None
    try:
        with fs.open(target, "wb") as handle:
            for frame in frames:
                table = frame.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(handle, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
                rows += frame.height
            if writer is not None:
                writer.close()
        if local:
            os.replace(target, path)
    except BaseException:
        if local and os.path.exists(target):
            os.remove(target)
        raise
    return rows


def extract(
    warehouse_uri: str,
    out_dir: str,
    source: ExtractSource | None = None,
    cutoff: date | datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, Any]:
    """Extract events, labels (and entities) into ``out_dir``; write and return the step manifest."""
    source = source or ExtractSource()
    started = time.perf_counter()
    cutoff_ts = _as_naive_utc(cutoff)
    warehouse = _Warehouse(warehouse_uri)
    log.info("extracting from %s (cutoff %s)", mask_uri(warehouse_uri), cutoff_ts or "none")
    key, ts, snap, label = (
        source.entity_key,
        source.timestamp_column,
        source.snapshot_column,
        source.label_column,
    )
    options = {
        key: "--entity-key",
        ts: "--timestamp-column",
        snap: "--snapshot-column",
        label: "--label-column",
    }
    q = warehouse.quote
    try:
        # --- check every source before writing anything ---------------------------------------------
        events_rel = warehouse.relation("events", source.events_table, source.events_query)
        labels_rel = warehouse.relation("labels", source.labels_table, source.labels_query)
        event_cols = warehouse.columns("events", events_rel)
        label_cols = warehouse.columns("labels", labels_rel)
        _require("events", event_cols, [key, ts], options)
        _require("labels", label_cols, [key, snap, label], options)
        for canonical in ("entity_id", "event_ts"):
            if canonical in event_cols and canonical not in (key, ts):
                raise ExtractError(
                    f"events source already has a column named {canonical!r}; rename it in a query"
                )
        entities_rel = entity_cols = None
        if source.entities_table:
            entities_rel = warehouse.relation("entities", source.entities_table, None)
            entity_cols = warehouse.columns("entities", entities_rel)
            _require("entities", entity_cols, [key], options)

        params: dict[str, Any] = {}
        events_where = labels_where = ""
        if cutoff_ts is not None:
            params["cutoff"] = warehouse.cutoff_param(cutoff_ts)
            events_where = f" WHERE src.{q(ts)} < :cutoff"
            labels_where = f" WHERE src.{q(snap)} <= :cutoff"
        other = [c for c in event_cols if c not in (key, ts)]
        order = ", ".join(f"src.{q(c)}" for c in [key, ts, *other])
        events_sql = f"SELECT * FROM {events_rel} AS src{events_where} ORDER BY {order}"
        labels_sql = (
            f"SELECT src.{q(key)}, src.{q(snap)}, src.{q(label)} FROM {labels_rel} AS src{labels_where} "
            f"ORDER BY src.{q(key)}, src.{q(snap)}, src.{q(label)}"
        )

        # --- events: one part per batch ------------------------------------------------------------
        to_events = _Canonicaliser(
            {key: "entity_id", ts: "event_ts"}, {"event_ts"}, warehouse.is_sqlite, None
        )
        events_dir = io.join_uri(out_dir, "events")
        parts = _PartWriter(events_dir)
        event_rows = 0
        try:
            for keys, rows in warehouse.stream(events_sql, params, batch_rows):
                frame = to_events(keys, rows)
                if cutoff_ts is not None:
                    frame = frame.filter(pl.col("event_ts") < cutoff_ts)
                if frame.height == 0:
                    continue
                parts.write(frame)
                event_rows += frame.height
                log.info("extracted %s rows (events)", f"{event_rows:,}")
            if not parts.names:  # keep the schema visible downstream even when nothing matched
                empty = to_events([key, ts, *other], [])
                parts.write(empty)
            part_uris = parts.commit()
        except BaseException:
            parts.abort()
            raise

        # --- labels (and entities): one file each ---------------------------------------------------
        snapshots: set[datetime] = set()
        to_labels = _Canonicaliser(
            {key: "entity_id", snap: "snapshot_ts", label: "label"},
            {"snapshot_ts"},
            warehouse.is_sqlite,
            "label",
        )

        def label_frames() -> Iterator[pl.DataFrame]:
            seen = False
            for keys, rows in warehouse.stream(labels_sql, params, batch_rows):
                frame = to_labels(keys, rows)
                if cutoff_ts is not None:
                    frame = frame.filter(pl.col("snapshot_ts") <= cutoff_ts)
                snapshots.update(frame["snapshot_ts"].unique().drop_nulls().to_list())
                seen = True
                yield frame
            if not seen:
                yield to_labels([key, snap, label], []).cast(
                    {"entity_id": pl.Utf8, "snapshot_ts": pl.Datetime("us"), "label": pl.Int8}
                )

        labels_uri = io.join_uri(out_dir, "labels.parquet")
        label_rows = _write_single(labels_uri, label_frames())
        log.info("extracted %s rows (labels, %d snapshots)", f"{label_rows:,}", len(snapshots))

        outputs = {"events": events_dir, "labels": labels_uri}
        rows = {"events": event_rows, "labels": label_rows, "entities": 0}
        hashed = [*part_uris, labels_uri]
        if entities_rel is not None:
            assert entity_cols is not None
            to_entities = _Canonicaliser({key: "entity_id"}, set(), warehouse.is_sqlite, None)
            order = ", ".join(f"src.{q(c)}" for c in [key, *[c for c in entity_cols if c != key]])
            entities_sql = f"SELECT * FROM {entities_rel} AS src ORDER BY {order}"
            entities_uri = io.join_uri(out_dir, "entities.parquet")
            rows["entities"] = _write_single(
                entities_uri, (to_entities(k, r) for k, r in warehouse.stream(entities_sql, {}, batch_rows))
            )
            outputs["entities"] = entities_uri
            hashed.append(entities_uri)
            log.info("extracted %s rows (entities)", f"{rows['entities']:,}")
        elif io.exists(io.join_uri(out_dir, "entities.parquet")):  # stale from an earlier run
            fs, path = io.filesystem(io.join_uri(out_dir, "entities.parquet"))
            fs.rm(path)
    finally:
        warehouse.engine.dispose()

    manifest = {
        "step": "extract",
        "outputs": outputs,
        "rows": rows,
        "parts": len(part_uris),
        "content_hash": io.hash_files(hashed),
        "cutoff": cutoff_ts.isoformat() if cutoff_ts else None,
        "source": source.describe(),
        "snapshots": [s.isoformat() for s in sorted(snapshots)],
        "seconds": round(time.perf_counter() - started, 3),
    }
    io.write_manifest(out_dir, manifest)
    log.info(
        "extract done: %s events in %d parts, %s labels, %s entities in %.1fs",
        f"{rows['events']:,}",
        len(part_uris),
        f"{rows['labels']:,}",
        f"{rows['entities']:,}",
        manifest["seconds"],
    )
    return manifest

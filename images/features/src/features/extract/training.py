"""``extract``: the training spine. Events, labels (the spine: entity, snapshot, label) and entities.

The source is configuration (:class:`mlcontract.source.TrainingSource`): a table or a SQL query for
events and labels, an optional entities table, and the names of the entity key, timestamp, snapshot and
label columns. Whatever the source calls them, the output uses the canonical names of ``docs/steps.md``
(and the manifest's ``columns`` says which user column each one is). With a cutoff, events strictly
before it and snapshots up to and including it. The label keeps the warehouse's type: the task (binary,
multiclass, regression) is the build's choice, not the extract's.

A ready-made feature table instead (``kind="feature_table"``, :mod:`features.extract.table`) gives
``labels.parquet`` with the feature columns next to entity, snapshot and label, and no events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime

import polars as pl
from mlcontract import storage
from mlcontract.manifests import ExtractManifest
from mlcontract.names import (
    ENTITY,
    EVENT_TS,
    FEATURE_TABLE_SOURCE,
    LABEL,
    LABELS_FILE,
    SNAPSHOT,
)
from mlcontract.source import TrainingSource

from features.extract import table as feature_tables
from features.extract.engine import ExtractEngine, step_outputs, writing
from features.extract.warehouse import DEFAULT_BATCH_ROWS, Canonicaliser, as_naive_utc

log = logging.getLogger(__name__)

# an empty extract has no label type to keep: it gets the binary one
EMPTY_LABELS_SCHEMA = {ENTITY: pl.Utf8, SNAPSHOT: pl.Datetime("us"), LABEL: pl.Int8}


@step_outputs
def extract(
    warehouse_uri: str,
    out_dir: str,
    source: TrainingSource | None = None,
    cutoff: date | datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    reader: str = "auto",
) -> ExtractManifest:
    """Extract events, labels (and entities) into ``out_dir``; write and return the step manifest.
    ``reader="sqlalchemy"`` reads through SQLAlchemy even where an Arrow driver exists (same output)."""
    source = source or TrainingSource()
    started = time.perf_counter()
    # a rerun's old manifest goes first: killed half-way, it leaves no old manifest beside new files
    storage.begin_rewrite(out_dir)
    cutoff_ts = as_naive_utc(cutoff)
    log.info("extracting for training (cutoff %s)", cutoff_ts or "none")
    if source.kind == FEATURE_TABLE_SOURCE:
        return extract_feature_table(warehouse_uri, out_dir, source, cutoff_ts, batch_rows, started, reader)
    key, snap, label = source.entity_key, source.snapshot_column, source.label_column
    assert snap is not None  # the source requires it with events
    with ExtractEngine(warehouse_uri, key, source.timestamp_column, batch_rows, reader) as engine:
        engine.check_queries(source.queries())
        events = engine.events_relation(*source.relation("events"))
        options = {key: "--entity-key", snap: "--snapshot-column", label: "--label-column"}
        labels = engine.relation("labels", *source.relation("labels"), options)
        entities = engine.entities_relation(source.entities_table)

        written = engine.write_events(events, out_dir, before=cutoff_ts)

        warehouse = engine.warehouse
        q = warehouse.quote
        # labels without a snapshot date are kept (the raw gate reports them, with or without a cutoff)
        where = f" WHERE {warehouse.before(snap, cutoff_ts, inclusive=True)}" if cutoff_ts is not None else ""
        labels_sql = (
            f"SELECT src.{q(key)}, src.{q(snap)}, src.{q(label)} FROM {labels.sql} AS src{where} "
            f"ORDER BY src.{q(key)}, src.{q(snap)}, src.{q(label)}"
        )
        to_labels = Canonicaliser({key: ENTITY, snap: SNAPSHOT, label: LABEL}, {SNAPSHOT}, warehouse.is_sqlite)
        snapshots: set[datetime] = set()

        def label_frames() -> Iterator[pl.DataFrame]:
            seen = False
            for batch in engine.stream(labels, labels_sql):
                frame = to_labels(batch)
                if cutoff_ts is not None:  # exact, after parsing
                    frame = frame.filter((pl.col(SNAPSHOT) <= cutoff_ts) | pl.col(SNAPSHOT).is_null())
                snapshots.update(frame[SNAPSHOT].unique().drop_nulls().to_list())
                seen = True
                yield frame
            if not seen:
                yield to_labels.empty([key, snap, label]).cast(EMPTY_LABELS_SCHEMA)

        labels_uri = storage.join_uri(out_dir, LABELS_FILE)
        with writing(f"the labels (from {labels.name})", labels_uri):
            label_rows = storage.write_parquet_stream(labels_uri, label_frames())
        log.info("extracted %s rows (labels, %d snapshots)", f"{label_rows:,}", len(snapshots))
        entities_uri, entity_rows = engine.write_entities(entities, out_dir)

    outputs = {"events": written.uri, "labels": labels_uri}
    hashed = [*written.parts, labels_uri]
    if entities_uri:
        outputs["entities"] = entities_uri
        hashed.append(entities_uri)
    manifest = ExtractManifest(
        outputs=outputs,
        rows={"events": written.rows, "labels": label_rows, "entities": entity_rows},
        parts=len(written.parts),
        content_hash=storage.hash_files(hashed),
        cutoff=cutoff_ts.isoformat() if cutoff_ts else None,
        source=source.describe(),
        snapshots=[s.isoformat() for s in sorted(snapshots)],
        columns={ENTITY: key, EVENT_TS: source.timestamp_column, SNAPSHOT: snap, LABEL: label},
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    log.info(
        "extract done: %s events in %d parts, %s labels, %s entities in %.1fs",
        f"{written.rows:,}", manifest.parts, f"{label_rows:,}", f"{entity_rows:,}", manifest.seconds,
    )
    return manifest


def extract_feature_table(
    warehouse_uri: str,
    out_dir: str,
    source: TrainingSource,
    cutoff: datetime | None,
    batch_rows: int,
    started: float,
    reader: str = "auto",
) -> ExtractManifest:
    """``labels.parquet`` from a ready-made feature table: entity, snapshot, label and the feature columns.

    Without a snapshot column every row is at one snapshot: the cutoff, else today (midnight UTC).
    """
    snapshots: set[datetime] = set()
    at = cutoff or datetime.combine(datetime.now(UTC).date(), datetime.min.time())

    def finish(frame: pl.DataFrame) -> pl.DataFrame:
        if SNAPSHOT not in frame.columns:
            frame = frame.with_columns(pl.lit(at, pl.Datetime("us")).alias(SNAPSHOT))
        elif cutoff is not None:  # exact, after parsing; rows without a date are for the raw gate
            frame = frame.filter((pl.col(SNAPSHOT) <= cutoff) | pl.col(SNAPSHOT).is_null())
        snapshots.update(frame[SNAPSHOT].unique().drop_nulls().to_list())
        return feature_tables.spine_order(frame)

    with ExtractEngine(warehouse_uri, source.entity_key, None, batch_rows, reader) as engine:
        engine.check_queries(source.queries())
        found = feature_tables.feature_table(engine, source, label_required=True)
        where = ""
        if cutoff is not None and SNAPSHOT in found.columns:
            where = f" WHERE {engine.warehouse.before(found.columns[SNAPSHOT], cutoff, inclusive=True)}"
        labels_uri = storage.join_uri(out_dir, LABELS_FILE)
        rows = feature_tables.write_rows(engine, found, labels_uri, finish, where)
    feature_tables.remove_event_outputs(out_dir)
    features = [c for c in found.relation.columns if c not in found.columns.values()]
    log.info("extracted %s rows (feature table, %d feature columns, %d snapshots)",
             f"{rows:,}", len(features), len(snapshots))
    manifest = ExtractManifest(
        outputs={"labels": labels_uri},
        rows={"labels": rows},
        parts=0,
        content_hash=storage.hash_files([labels_uri]),
        cutoff=cutoff.isoformat() if cutoff else None,
        source=source.describe(),
        snapshots=[s.isoformat() for s in sorted(snapshots)],
        kind=FEATURE_TABLE_SOURCE,
        columns=found.columns,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest

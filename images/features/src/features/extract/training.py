"""``extract``: the training spine. Events, labels (the spine: entity, snapshot, label) and entities.

The source is configuration (:class:`mlcontract.source.TrainingSource`): a table or a SQL query for
events and labels, an optional entities table, and the names of the entity key, timestamp, snapshot and
label columns. Whatever the source calls them, the output uses the canonical names of ``docs/steps.md``.
With a cutoff, events strictly before it and snapshots up to and including it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import date, datetime

import polars as pl
from mlcontract import storage
from mlcontract.manifests import ExtractManifest
from mlcontract.names import ENTITY, LABEL, LABELS_FILE, SNAPSHOT
from mlcontract.source import TrainingSource

from features.extract.engine import ExtractEngine
from features.extract.warehouse import DEFAULT_BATCH_ROWS, Canonicaliser, as_naive_utc

log = logging.getLogger(__name__)

LABELS_SCHEMA = {ENTITY: pl.Utf8, SNAPSHOT: pl.Datetime("us"), LABEL: pl.Int8}


def extract(
    warehouse_uri: str,
    out_dir: str,
    source: TrainingSource | None = None,
    cutoff: date | datetime | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ExtractManifest:
    """Extract events, labels (and entities) into ``out_dir``; write and return the step manifest."""
    source = source or TrainingSource()
    started = time.perf_counter()
    cutoff_ts = as_naive_utc(cutoff)
    log.info("extracting for training (cutoff %s)", cutoff_ts or "none")
    key, snap, label = source.entity_key, source.snapshot_column, source.label_column
    with ExtractEngine(warehouse_uri, key, source.timestamp_column, batch_rows) as engine:
        events = engine.events_relation(*source.relation("events"))
        options = {key: "--entity-key", snap: "--snapshot-column", label: "--label-column"}
        labels = engine.relation("labels", *source.relation("labels"), options)
        entities = engine.entities_relation(source.entities_table)

        written = engine.write_events(events, out_dir, before=cutoff_ts)

        warehouse = engine.warehouse
        q = warehouse.quote
        where, params = "", {}
        if cutoff_ts is not None:
            where, params = f" WHERE src.{q(snap)} <= :cutoff", {"cutoff": warehouse.upper_bound(cutoff_ts)}
        labels_sql = (
            f"SELECT src.{q(key)}, src.{q(snap)}, src.{q(label)} FROM {labels.sql} AS src{where} "
            f"ORDER BY src.{q(key)}, src.{q(snap)}, src.{q(label)}"
        )
        to_labels = Canonicaliser({key: ENTITY, snap: SNAPSHOT, label: LABEL}, {SNAPSHOT}, warehouse.is_sqlite, LABEL)
        snapshots: set[datetime] = set()

        def label_frames() -> Iterator[pl.DataFrame]:
            seen = False
            for keys, rows in warehouse.stream(labels_sql, params, batch_rows):
                frame = to_labels(keys, rows)
                if cutoff_ts is not None:
                    frame = frame.filter(pl.col(SNAPSHOT) <= cutoff_ts)
                snapshots.update(frame[SNAPSHOT].unique().drop_nulls().to_list())
                seen = True
                yield frame
            if not seen:
                yield to_labels([key, snap, label], []).cast(LABELS_SCHEMA)

        labels_uri = storage.join_uri(out_dir, LABELS_FILE)
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
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    log.info(
        "extract done: %s events in %d parts, %s labels, %s entities in %.1fs",
        f"{written.rows:,}", manifest.parts, f"{label_rows:,}", f"{entity_rows:,}", manifest.seconds,
    )
    return manifest

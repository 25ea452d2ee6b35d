"""``extract-labels``: the realised labels at one snapshot date, for monitoring the served model.

``labels.parquet`` holds ``entity_id`` (Utf8) and ``label`` (Int8) of the rows whose snapshot falls on the
score date ``D``; it is empty, with that schema, while no label for ``D`` exists yet. Same warehouse access
and timestamp parsing as the other extracts: on SQLite the SQL compares ISO date prefixes and the exact
day is checked after parsing.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime, timedelta

import polars as pl
from mlcontract import storage
from mlcontract.manifests import LabelsManifest
from mlcontract.names import ENTITY, LABEL, LABELS_FILE, SNAPSHOT
from mlcontract.source import LabelSource

from features.errors import ExtractError
from features.extract.engine import ExtractEngine
from features.extract.warehouse import DEFAULT_BATCH_ROWS, Canonicaliser

log = logging.getLogger(__name__)

LABELS_SCHEMA = {ENTITY: pl.Utf8, LABEL: pl.Int8}


def extract_labels(
    warehouse_uri: str,
    out_dir: str,
    score_date: date,
    source: LabelSource | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> LabelsManifest:
    """Write ``labels.parquet`` (the labels at snapshot date ``score_date``) and the step manifest."""
    source = source or LabelSource()
    started = time.perf_counter()
    key, snap, label = source.entity_key, source.snapshot_column, source.label_column
    day = datetime(score_date.year, score_date.month, score_date.day)
    with ExtractEngine(warehouse_uri, key, snap, batch_rows) as engine:
        options = {key: "--entity-key", snap: "--snapshot-column", label: "--label-column"}
        labels = engine.relation("labels", *source.relation("labels"), options)
        warehouse, q = engine.warehouse, engine.warehouse.quote
        sql = (
            f"SELECT src.{q(key)}, src.{q(snap)}, src.{q(label)} FROM {labels.sql} AS src "
            f"WHERE src.{q(snap)} >= :start AND src.{q(snap)} < :end ORDER BY src.{q(key)}"
        )
        params = {"start": warehouse.lower_bound(day), "end": warehouse.lower_bound(day + timedelta(days=1))}
        to_labels = Canonicaliser({key: ENTITY, snap: SNAPSHOT, label: LABEL}, {SNAPSHOT}, warehouse.is_sqlite, LABEL)
        frames = [to_labels(keys, rows) for keys, rows in warehouse.stream(sql, params, batch_rows)]

    found = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema={SNAPSHOT: pl.Datetime("us")})
    found = found.filter(pl.col(SNAPSHOT).dt.date() == score_date)  # the exact day, after parsing
    if found.height == 0:
        realised = pl.DataFrame(schema=LABELS_SCHEMA)
    else:
        bad = found.filter(~pl.col(LABEL).is_in([0, 1]) | pl.col(LABEL).is_null())
        if bad.height:
            raise ExtractError(
                f"label column {label!r} must hold 0/1, found {bad.height} other value(s) on {score_date}"
            )
        realised = found.select(pl.col(ENTITY).cast(pl.Utf8), pl.col(LABEL).cast(pl.Int8)).unique(
            ENTITY, keep="first", maintain_order=True
        )
    labels_uri = storage.join_uri(out_dir, LABELS_FILE)
    storage.write_parquet(labels_uri, realised)
    log.info("%s realised labels at %s", f"{realised.height:,}", score_date)
    manifest = LabelsManifest(
        outputs={"labels": labels_uri},
        rows={"labels": realised.height},
        score_date=score_date.isoformat(),
        source=source.describe(),
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest

"""``extract-labels``: the realised labels at one snapshot date, for monitoring the served model.

``labels.parquet`` holds ``entity_id`` (Utf8) and ``label`` of the rows whose snapshot falls on the score
date ``D``; it is empty, with that schema, while no label for ``D`` exists yet. The label is in the model's
terms, per task: binary 0/1 (Int8; booleans are 0/1), multiclass the class as the user's label column
spells it (Utf8, like the snapshot's ``classes``), regression a number (Float64). A ready-made feature
table works as a labels table; without a snapshot column all its rows are labels of ``D``. Same warehouse
access and timestamp parsing as the other extracts: on SQLite the SQL compares ISO date prefixes and the
exact day is checked after parsing.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime

import polars as pl
from mlcontract import storage
from mlcontract.manifests import LabelsManifest
from mlcontract.names import BINARY, ENTITY, LABEL, LABELS_FILE, MULTICLASS, REGRESSION, SNAPSHOT
from mlcontract.source import LabelSource

from features.errors import ExtractError
from features.extract.engine import ExtractEngine, step_outputs, writing
from features.extract.warehouse import DEFAULT_BATCH_ROWS, Canonicaliser

log = logging.getLogger(__name__)

LABEL_TYPES = {BINARY: pl.Int8, MULTICLASS: pl.Utf8, REGRESSION: pl.Float64}


def labels_schema(task: str) -> dict[str, pl.DataType]:
    return {ENTITY: pl.Utf8, LABEL: LABEL_TYPES[task]}


@step_outputs
def extract_labels(
    warehouse_uri: str,
    out_dir: str,
    score_date: date,
    source: LabelSource | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    task: str = BINARY,
    reader: str = "auto",
) -> LabelsManifest:
    """Write ``labels.parquet`` (the labels at snapshot date ``score_date``) and the step manifest."""
    source = source or LabelSource()
    started = time.perf_counter()
    key, snap, label = source.entity_key, source.snapshot_column, source.label_column
    day = datetime(score_date.year, score_date.month, score_date.day)
    with ExtractEngine(warehouse_uri, key, None, batch_rows, reader) as engine:
        engine.check_queries(source.queries())
        options = {key: "--entity-key", label: "--label-column"}
        if snap:
            options[snap] = "--snapshot-column"
        labels = engine.relation("labels", *source.relation("labels"), options)
        warehouse, q = engine.warehouse, engine.warehouse.quote
        selected, where = [key, label], ""
        if snap:
            selected.append(snap)
            where = f" WHERE {warehouse.on_day(snap, day)}"
        sql = f"SELECT {', '.join(f'src.{q(c)}' for c in selected)} FROM {labels.sql} AS src{where} ORDER BY src.{q(key)}"
        renames = {key: ENTITY, label: LABEL, **({snap: SNAPSHOT} if snap else {})}
        to_labels = Canonicaliser(renames, {SNAPSHOT} if snap else set(), warehouse.is_sqlite)
        frames = [to_labels(batch) for batch in engine.stream(labels, sql)]

    found = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema={ENTITY: pl.Utf8, LABEL: pl.Null})
    if snap and found.height:
        found = found.filter(pl.col(SNAPSHOT).dt.date() == score_date)  # the exact day, after parsing
    if found.height == 0:
        realised = pl.DataFrame(schema=labels_schema(task))
    else:
        realised = found.select(pl.col(ENTITY).cast(pl.Utf8), task_label(found[LABEL], task, label, score_date)).unique(
            ENTITY, keep="first", maintain_order=True
        )
    labels_uri = storage.join_uri(out_dir, LABELS_FILE)
    with writing(f"the labels (from {labels.name})", labels_uri):
        storage.write_parquet(labels_uri, realised)
    log.info("%s realised labels at %s", f"{realised.height:,}", score_date)
    manifest = LabelsManifest(
        outputs={"labels": labels_uri},
        rows={"labels": realised.height},
        score_date=score_date.isoformat(),
        source=source.describe(),
        task=task,
        columns={ENTITY: key, LABEL: label, **({SNAPSHOT: snap} if snap else {})},
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest


def task_label(values: pl.Series, task: str, column: str, score_date: date) -> pl.Series:
    """The label column in the model's terms for ``task``, or an error naming the column and a bad value."""
    # numbers, booleans, or text that spells a number ('1' in a TEXT column); anything else is not a number
    numbers = values.cast(pl.Float64, strict=False)
    if task == MULTICLASS:  # the class as the user's column spells it, like the snapshot's `classes`
        return values.cast(pl.Utf8).alias(LABEL)
    if task == BINARY:
        bad, expected = ~numbers.is_in([0.0, 1.0]).fill_null(False), "0/1 (or booleans)"
    else:
        bad, expected = ~numbers.is_finite().fill_null(False), "finite numbers"
    if bad.any():
        raise ExtractError(
            f"label column {column!r} must hold {expected} for task={task}, found {int(bad.sum()):,} other "
            f"value(s) on {score_date}, e.g. {values.filter(bad)[0]!r}"
        )
    return numbers.cast(LABEL_TYPES[task]).alias(LABEL)

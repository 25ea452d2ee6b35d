"""``extract-scoring``: the scoring spine. The entities to score on ``as_of`` and their events before it.

The spine (``spine.parquet``: ``entity_id``, ``snapshot_ts`` = as_of) holds every entity with an event
before ``as_of`` plus the entity table's entities that signed up before it; the events are those strictly
before ``as_of``, in the canonical layout of ``docs/steps.md``, written by the same engine as the training
extract. The spine keeps the entity table as it is: a duplicated key there gives a duplicated spine row,
hence a duplicated prediction, which the predictions gate rejects before publishing.

From a ready-made feature table (:mod:`features.extract.table`) the spine holds its rows (those whose
snapshot falls on the score date when it has a snapshot column, else all) with their feature columns
under the user's names, and there are no events.
"""

from __future__ import annotations

import logging
import time
from datetime import date, datetime

import polars as pl
from mlcontract import storage
from mlcontract.manifests import ScoringExtractManifest
from mlcontract.names import (
    ENTITY,
    EVENT_TS,
    FEATURE_TABLE_SOURCE,
    LABEL,
    SNAPSHOT,
    SPINE_FILE,
)
from mlcontract.source import ScoringSource

from features.errors import ExtractError
from features.extract import table as feature_tables
from features.extract.engine import ExtractEngine, step_outputs
from features.extract.warehouse import DEFAULT_BATCH_ROWS, as_naive_utc

log = logging.getLogger(__name__)


@step_outputs
def extract_scoring(
    warehouse_uri: str,
    out_dir: str,
    as_of: date | datetime | str,
    source: ScoringSource | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    reader: str = "auto",
) -> ScoringExtractManifest:
    """Write ``events/``, ``spine.parquet`` (entity_id, snapshot_ts = as_of) and ``entities.parquet``.
    ``reader="sqlalchemy"`` reads through SQLAlchemy even where an Arrow driver exists (same output)."""
    source = source or ScoringSource()
    started = time.perf_counter()
    storage.begin_rewrite(out_dir)  # as in the training extract: no old manifest beside new files
    as_of_ts = as_naive_utc(as_of)
    assert as_of_ts is not None
    log.info("extracting the entities to score on %s", as_of_ts.isoformat())
    if source.kind == FEATURE_TABLE_SOURCE:
        return extract_scoring_table(warehouse_uri, out_dir, as_of_ts, source, batch_rows, started, reader)
    with ExtractEngine(warehouse_uri, source.entity_key, source.timestamp_column, batch_rows, reader) as engine:
        engine.check_queries(source.queries())
        events = engine.events_relation(*source.relation("events"))
        entities = engine.entities_relation(source.entities_table)
        if entities is not None and source.signup_column and source.signup_column not in entities.columns:
            raise ExtractError(
                f"entities table {source.entities_table!r} has no column {source.signup_column!r} "
                f"(from --signup-column; '' to take every entity); columns are: {', '.join(entities.columns)}"
            )
        written = engine.write_events(events, out_dir, before=as_of_ts, keep_missing=False)
        entities_uri, entity_rows = engine.write_entities(entities, out_dir)

    spine, from_table = scoring_spine(written.uri, entities_uri, source.signup_column, as_of_ts)
    spine_uri = storage.join_uri(out_dir, SPINE_FILE)
    storage.write_parquet(spine_uri, spine)
    log.info(
        "spine: %s entities to score (%s from the entity table, %s more with events)",
        f"{spine.height:,}", f"{from_table:,}", f"{spine.height - from_table:,}",
    )
    outputs = {"events": written.uri, "spine": spine_uri}
    hashed = list(written.parts)
    if entities_uri:
        outputs["entities"] = entities_uri
        hashed.append(entities_uri)
    hashed.append(spine_uri)
    manifest = ScoringExtractManifest(
        outputs=outputs,
        rows={"events": written.rows, "entities": entity_rows, "spine": spine.height},
        parts=len(written.parts),
        content_hash=storage.hash_files(hashed),
        as_of=as_of_ts.isoformat(),
        score_date=as_of_ts.date().isoformat(),
        source=source.describe(),
        snapshots=[as_of_ts.isoformat()],
        columns={ENTITY: source.entity_key, EVENT_TS: source.timestamp_column},
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest


def extract_scoring_table(
    warehouse_uri: str,
    out_dir: str,
    as_of: datetime,
    source: ScoringSource,
    batch_rows: int,
    started: float,
    reader: str = "auto",
) -> ScoringExtractManifest:
    """``spine.parquet`` from a ready-made feature table: the rows to score (the score date's, when the
    table has a snapshot column) with their feature columns; ``snapshot_ts`` = as_of, no label."""
    day = as_of.date()

    def finish(frame: pl.DataFrame) -> pl.DataFrame:
        if SNAPSHOT in frame.columns:
            frame = frame.filter(pl.col(SNAPSHOT).dt.date() == day)  # the exact day, after parsing
        frame = frame.drop(SNAPSHOT, LABEL, strict=False)
        return feature_tables.spine_order(frame.with_columns(pl.lit(as_of, pl.Datetime("us")).alias(SNAPSHOT)))

    with ExtractEngine(warehouse_uri, source.entity_key, None, batch_rows, reader) as engine:
        engine.check_queries(source.queries())
        found = feature_tables.feature_table(engine, source, label_required=False)
        where = ""
        if SNAPSHOT in found.columns:
            where = f" WHERE {engine.warehouse.on_day(found.columns[SNAPSHOT], datetime(day.year, day.month, day.day))}"
        spine_uri = storage.join_uri(out_dir, SPINE_FILE)
        rows = feature_tables.write_rows(engine, found, spine_uri, finish, where)
    feature_tables.remove_event_outputs(out_dir)
    log.info("spine: %s rows of the %s to score", f"{rows:,}", found.name)
    manifest = ScoringExtractManifest(
        outputs={"spine": spine_uri},
        rows={"spine": rows},
        parts=0,
        content_hash=storage.hash_files([spine_uri]),
        as_of=as_of.isoformat(),
        score_date=day.isoformat(),
        source=source.describe(),
        snapshots=[as_of.isoformat()],
        kind=FEATURE_TABLE_SOURCE,
        columns=found.columns,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest


def scoring_spine(
    events_uri: str, entities_uri: str | None, signup_column: str | None, as_of: datetime
) -> tuple[pl.DataFrame, int]:
    """The entities of the entity table (signed up before ``as_of``) + the other entities with events;
    returns the spine and how many of its rows come from the entity table."""
    event_entities = (
        storage.scan_parquet(storage.join_uri(events_uri, "*.parquet"))
        .select(pl.col(ENTITY).cast(pl.String))
        .unique()
        .collect(engine="streaming")
    )
    from_table = pl.DataFrame(schema={ENTITY: pl.String})
    if entities_uri:
        entities = storage.read_parquet(entities_uri)
        if signup_column and entities.schema[signup_column].is_temporal():
            signup = pl.col(signup_column).cast(pl.Datetime("us"))
            entities = entities.filter(signup.is_null() | (signup < as_of))
        from_table = entities.select(pl.col(ENTITY).cast(pl.String))
    only_events = event_entities.join(from_table.unique(), on=ENTITY, how="anti")
    spine = (
        pl.concat([from_table, only_events])
        .drop_nulls(ENTITY)
        .sort(ENTITY)
        .with_columns(pl.lit(as_of, pl.Datetime("us")).alias(SNAPSHOT))
    )
    return spine, from_table.height

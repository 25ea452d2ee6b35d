"""The extract engine shared by every spine: check the sources, stream events into parts, write entities.

The training extract (:mod:`features.extract.training`, labels as the spine) and the scoring extract
(:mod:`features.extract.scoring`, an as-of date as the spine) differ only in their spine; everything
else is here. Every source is checked (tables exist, the named columns are there, no source column
clashes with a canonical name) before anything is written. Events are read with a server-side cursor and
written as ``events/part-NNNNN.parquet``, one file per batch, into a staged directory that replaces the
old one at once, so a rerun never leaves stale parts. Output order is total (entity, timestamp, then
every other column), so identical warehouse content gives identical files and the same content hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import polars as pl
from mlcontract import storage
from mlcontract.names import ENTITIES_FILE, ENTITY, EVENT_TS, EVENTS_DIR, PART_PREFIX

from features.errors import ExtractError
from features.extract.warehouse import DEFAULT_BATCH_ROWS, Canonicaliser, Warehouse, require_columns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Relation:
    """A checked source: what goes after ``FROM`` and the columns it returns."""

    kind: str
    sql: str
    columns: list[str]


@dataclass(frozen=True)
class WrittenEvents:
    uri: str
    parts: list[str]
    rows: int


class ExtractEngine:
    """Reads one warehouse for one step; use as a context manager (the engine is disposed at the end)."""

    def __init__(
        self,
        warehouse_uri: str,
        entity_key: str,
        timestamp_column: str | None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ):
        self.warehouse = Warehouse(warehouse_uri)
        self.key, self.ts = entity_key, timestamp_column or ""
        self.batch_rows = batch_rows
        self.options = {entity_key: "--entity-key"}
        if timestamp_column:  # a feature table has none
            self.options[timestamp_column] = "--timestamp-column"
        # the backend and database name say which warehouse without its address or credentials
        url = self.warehouse.engine.url
        log.info("reading the %s warehouse, database %r", url.get_backend_name(), url.database)

    def __enter__(self) -> ExtractEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.warehouse.close()

    # --- checks, before anything is written -------------------------------------------------------------

    def relation(self, kind: str, table: str | None, query: str | None, required: dict[str, str]) -> Relation:
        """A table or query that exists, answers, and has the ``required`` columns (name -> option)."""
        sql = self.warehouse.relation(kind, table, query)
        columns = self.warehouse.columns(kind, sql)
        require_columns(kind, columns, required)
        return Relation(kind, sql, columns)

    def events_relation(self, table: str | None, query: str | None) -> Relation:
        events = self.relation("events", table, query, self.options)
        for canonical in (ENTITY, EVENT_TS):
            if canonical in events.columns and canonical not in (self.key, self.ts):
                raise ExtractError(f"events source already has a column named {canonical!r}; rename it in a query")
        return events

    def entities_relation(self, table: str | None) -> Relation | None:
        if not table:
            return None
        return self.relation("entities", table, None, {self.key: self.options[self.key]})

    # --- writes --------------------------------------------------------------------------------------------

    def write_events(self, events: Relation, out_dir: str, before: datetime | None) -> WrittenEvents:
        """Events (strictly before ``before`` when given), one part per batch, into ``out_dir/events``."""
        q = self.warehouse.quote
        other = [c for c in events.columns if c not in (self.key, self.ts)]
        order = ", ".join(f"src.{q(c)}" for c in [self.key, self.ts, *other])
        where, params = "", {}
        if before is not None:
            where, params = f" WHERE src.{q(self.ts)} < :before", {"before": self.warehouse.upper_bound(before)}
        sql = f"SELECT * FROM {events.sql} AS src{where} ORDER BY {order}"
        to_events = Canonicaliser({self.key: ENTITY, self.ts: EVENT_TS}, {EVENT_TS}, self.warehouse.is_sqlite)
        events_uri = storage.join_uri(out_dir, EVENTS_DIR)
        names: list[str] = []
        rows = 0
        with storage.StagedDirectory(events_uri) as staged:

            def write_part(frame: pl.DataFrame) -> None:
                names.append(f"{PART_PREFIX}{len(names):05d}.parquet")
                storage.write_parquet(storage.join_uri(staged.uri, names[-1]), frame)

            for keys, batch in self.warehouse.stream(sql, params, self.batch_rows):
                frame = to_events(keys, batch)
                if before is not None:
                    frame = frame.filter(pl.col(EVENT_TS) < before)  # exact, after parsing
                if frame.height == 0:
                    continue
                write_part(frame)
                rows += frame.height
                log.info("extracted %s rows (events)", f"{rows:,}")
            if not names:  # keep the schema visible downstream even when nothing matched
                write_part(to_events([self.key, self.ts, *other], []))
        return WrittenEvents(events_uri, [storage.join_uri(events_uri, name) for name in names], rows)

    def write_entities(self, entities: Relation | None, out_dir: str) -> tuple[str | None, int]:
        """``out_dir/entities.parquet`` (URI, rows); without an entities source, a stale file is removed."""
        uri = storage.join_uri(out_dir, ENTITIES_FILE)
        if entities is None:
            storage.remove(uri)  # from an earlier run of this step with an entities table
            return None, 0
        q = self.warehouse.quote
        to_entities = Canonicaliser({self.key: ENTITY}, set(), self.warehouse.is_sqlite)
        order = ", ".join(f"src.{q(c)}" for c in [self.key, *[c for c in entities.columns if c != self.key]])
        sql = f"SELECT * FROM {entities.sql} AS src ORDER BY {order}"
        batches = self.warehouse.stream(sql, {}, self.batch_rows)
        rows = storage.write_parquet_stream(uri, (to_entities(keys, batch) for keys, batch in batches))
        log.info("extracted %s rows (entities)", f"{rows:,}")
        return uri, rows

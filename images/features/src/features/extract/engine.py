"""The extract engine shared by every spine: check the sources, stream events into parts, write entities.

The training extract (:mod:`features.extract.training`, labels as the spine) and the scoring extract
(:mod:`features.extract.scoring`, an as-of date as the spine) differ only in their spine; everything
else is here. Every source is checked (tables exist, the named columns are there, no source column
clashes with a canonical name) before anything is written. Every query Param is checked to be one read-only
query before anything runs. Events are read in batches (Arrow or a server-side cursor, see
:mod:`features.extract.warehouse`) and written as ``events/part-NNNNN.parquet``, one file per batch, into a staged directory that replaces the
old one at once, so a rerun never leaves stale parts. Output order is total (entity, timestamp, then
every other column), so identical warehouse content gives identical files and the same content hash.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import polars as pl
from mlcontract import storage
from mlcontract.names import ENTITIES_FILE, ENTITY, EVENT_TS, EVENTS_DIR, PART_PREFIX
from mlcontract.source import mask_uri

from features.errors import ExtractError
from features.extract.query import read_only_query
from features.extract.warehouse import (
    DEFAULT_BATCH_ROWS,
    Canonicaliser,
    Warehouse,
    query_param,
    require_columns,
    source_name,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Relation:
    """A checked source: what goes after ``FROM``, the columns it returns, how messages name it."""

    kind: str
    sql: str
    columns: list[str]
    name: str


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
        reader: str = "auto",
    ):
        self.warehouse = Warehouse(warehouse_uri, reader)
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

    def check_queries(self, queries: dict[str, str]) -> None:
        """Every query Param (``{kind}_query`` -> SQL) is one read-only query, before any SQL runs."""
        for param, query in queries.items():
            read_only_query(query, query_param(param.removesuffix("_query")), self.warehouse.backend)

    def relation(self, kind: str, table: str | None, query: str | None, required: dict[str, str]) -> Relation:
        """A table or query that exists, answers, and has the ``required`` columns (name -> option)."""
        sql = self.warehouse.relation(kind, table, query)
        name = source_name(kind, table)
        columns = self.warehouse.columns(name, sql)
        require_columns(kind, columns, required)
        return Relation(kind, sql, columns, name)

    def stream(self, relation: Relation, sql: str) -> Iterator[pl.DataFrame]:
        """``sql`` (a read of ``relation``) in batches; a driver error names the relation."""
        return self.warehouse.stream(sql, self.batch_rows, relation.name)

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

    def write_events(
        self, events: Relation, out_dir: str, before: datetime | None, *, keep_missing: bool = True
    ) -> WrittenEvents:
        """Events (strictly before ``before`` when given), one part per batch, into ``out_dir/events``.

        Events without a timestamp are kept when ``keep_missing`` (the training extract: the raw gate
        reports them, with or without a cutoff), else left out with a warning that counts them."""
        q = self.warehouse.quote
        other = [c for c in events.columns if c not in (self.key, self.ts)]
        order = ", ".join(f"src.{q(c)}" for c in [self.key, self.ts, *other])
        where = f" WHERE {self.warehouse.before(self.ts, before)}" if before is not None else ""
        sql = f"SELECT * FROM {events.sql} AS src{where} ORDER BY {order}"
        to_events = Canonicaliser({self.key: ENTITY, self.ts: EVENT_TS}, {EVENT_TS}, self.warehouse.is_sqlite)
        events_uri = storage.join_uri(out_dir, EVENTS_DIR)
        names: list[str] = []
        rows = missing = 0
        staging = storage.StagedDirectory(events_uri)
        with writing(f"the events (from {events.name})", events_uri), staging as staged:

            def write_part(frame: pl.DataFrame) -> None:
                names.append(f"{PART_PREFIX}{len(names):05d}.parquet")
                storage.write_parquet(storage.join_uri(staged.uri, names[-1]), frame)

            for batch in self.stream(events, sql):
                frame = to_events(batch)
                if before is not None:
                    undated = pl.col(EVENT_TS).is_null()
                    missing += frame.select(undated.sum()).item()
                    # exact, after parsing
                    frame = frame.filter((pl.col(EVENT_TS) < before) | (undated if keep_missing else False))
                if frame.height == 0:
                    continue
                write_part(frame)
                rows += frame.height
                log.info("extracted %s rows (events)", f"{rows:,}")
            if not names:  # keep the schema visible downstream even when nothing matched
                write_part(to_events.empty([self.key, self.ts, *other]))
        if missing and not keep_missing:
            log.warning("%s events of %s have no %s: left out", f"{missing:,}", events.name, self.ts)
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
        with writing(f"the entities (from {entities.name})", uri):
            rows = storage.write_parquet_stream(uri, (to_entities(batch) for batch in self.stream(entities, sql)))
        log.info("extracted %s rows (entities)", f"{rows:,}")
        return uri, rows


def storage_errors() -> tuple[type[BaseException], ...]:
    """What writing to the artifact store raises (local files, or S3 through s3fs and botocore)."""
    errors: tuple[type[BaseException], ...] = (OSError,)
    try:
        import botocore.exceptions

        errors += (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
    except ImportError:  # pragma: no cover - the image has s3fs
        pass
    return errors


def step_outputs(step: Callable[..., T]) -> Callable[..., T]:
    """An extract entry point ``step(warehouse_uri, out_dir, ...)`` whose remaining storage errors (the
    manifest, the spine...) are one line naming ``out_dir``, like those :func:`writing` names in detail."""

    @functools.wraps(step)
    def run(warehouse_uri: str, out_dir: str, *args: Any, **kwargs: Any) -> T:
        with writing("the step's outputs", out_dir):
            return step(warehouse_uri, out_dir, *args, **kwargs)

    return run


@contextmanager
def writing(what: str, uri: str) -> Iterator[None]:
    """A storage error while writing ``what`` to ``uri`` as one line naming both (the URI masked)."""
    try:
        yield
    except storage_errors() as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExtractError(f"could not write {what} to {mask_uri(uri)}: {detail}") from None

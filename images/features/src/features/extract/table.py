"""Ready-made feature tables (``kind="feature_table"``): a warehouse relation that already holds one row per
entity (or per entity and snapshot date) with the label and the feature columns.

The rows go into the spine file as they are typed in the warehouse: ``entity_id``, ``snapshot_ts``, and
``label`` under their canonical names, every other column under the user's own name. The training
extract (:mod:`features.extract.training`) and the scoring extract (:mod:`features.extract.scoring`)
differ only in which rows they keep and what they put in ``snapshot_ts``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl
from mlcontract import storage
from mlcontract.names import ENTITIES_FILE, ENTITY, EVENTS_DIR, LABEL, SNAPSHOT
from mlcontract.source import ScoringSource, TrainingSource

from features.errors import ExtractError
from features.extract.engine import ExtractEngine, Relation, writing
from features.extract.warehouse import Canonicaliser

OPTIONS = {ENTITY: "--entity-key", SNAPSHOT: "--snapshot-column", LABEL: "--label-column"}


@dataclass(frozen=True)
class FeatureTable:
    """A checked feature table: its relation, how messages name it, and its key, snapshot and label."""

    relation: Relation
    name: str
    columns: dict[str, str]  # canonical -> the user's column, for those the table has

    @property
    def keys(self) -> list[str]:
        """The canonical columns that identify a row."""
        return [c for c in (ENTITY, SNAPSHOT) if c in self.columns]


def feature_table(engine: ExtractEngine, source: TrainingSource | ScoringSource, *, label_required: bool) -> FeatureTable:
    """The source's feature table, after checking that its named columns are there and that no other
    column of it is called like a canonical column."""
    table, query = source.relation("features")
    name = f"feature table {table!r}" if table else "the --features-query result"
    named = {ENTITY: source.entity_key, SNAPSHOT: source.snapshot_column, LABEL: source.label_column}
    required = {named[c]: OPTIONS[c] for c in (ENTITY, SNAPSHOT) if named[c]}
    if label_required:
        required[named[LABEL]] = OPTIONS[LABEL]  # type: ignore[index]
    relation = engine.relation("features", table, query, required)
    columns = {c: user for c, user in named.items() if user and user in relation.columns}
    for canonical, option in OPTIONS.items():
        if canonical in relation.columns and columns.get(canonical) != canonical:
            raise ExtractError(
                f"{name} has a column named {canonical!r} that is not its {option}; "
                f"name it with {option} {canonical} or rename it in --features-query"
            )
    return FeatureTable(relation, name, columns)


def write_rows(
    engine: ExtractEngine,
    table: FeatureTable,
    uri: str,
    finish: Callable[[pl.DataFrame], pl.DataFrame],
    where: str = "",
) -> int:
    """Stream the table's rows (``where`` in SQL, ``finish`` after parsing) into one parquet file at ``uri``;
    the row count. Fails, naming the table and its columns, when a key is on more than one row."""
    warehouse, q = engine.warehouse, engine.warehouse.quote
    order = ", ".join(f"src.{q(table.columns[c])}" for c in table.keys)
    sql = f"SELECT * FROM {table.relation.sql} AS src{where} ORDER BY {order}"
    renames = {user: canonical for canonical, user in table.columns.items()}
    timestamps = {SNAPSHOT} if SNAPSHOT in table.columns else set()
    to_rows = Canonicaliser(renames, timestamps, warehouse.is_sqlite)

    def frames() -> Iterator[pl.DataFrame]:
        seen = False
        for batch in engine.stream(table.relation, sql):
            seen = True
            yield finish(to_rows(batch))
        if not seen:  # keep the columns visible downstream even when nothing matched
            yield finish(to_rows.empty(table.relation.columns))

    with writing(f"the rows of {table.name}", uri):
        rows = storage.write_parquet_stream(uri, frames())
    require_unique(table, uri)
    return rows


def require_unique(table: FeatureTable, uri: str) -> None:
    """One row per entity (and snapshot date, when the table has a snapshot column), or an error naming
    the table, its key columns and an example."""
    keys = [ENTITY, SNAPSHOT] if SNAPSHOT in table.columns else [ENTITY]
    repeated = (
        storage.scan_parquet(uri)
        .group_by(keys)
        .agg(pl.len().alias("rows"))
        .filter(pl.col("rows") > 1)
        .sort(keys)
        .collect()
    )
    if repeated.height:
        users = [table.columns[c] for c in keys]
        example = ", ".join(f"{user}={repeated[c][0]!s}" for user, c in zip(users, keys, strict=True))
        per = " and ".join(users)
        raise ExtractError(
            f"{table.name} has {repeated.height:,} duplicated ({', '.join(users)}) key(s), e.g. {example} "
            f"on {repeated['rows'][0]} rows: it must hold one row per {per}"
        )


def remove_event_outputs(out_dir: str) -> None:
    """A feature table has no events and no entities: remove those of an earlier run of the step on events."""
    storage.remove(storage.join_uri(out_dir, EVENTS_DIR))
    storage.remove(storage.join_uri(out_dir, ENTITIES_FILE))


def spine_order(frame: pl.DataFrame) -> pl.DataFrame:
    """The canonical columns first (those present), then the feature columns in the table's order."""
    first = [c for c in (ENTITY, SNAPSHOT, LABEL) if c in frame.columns]
    return frame.select(*first, *[c for c in frame.columns if c not in first])

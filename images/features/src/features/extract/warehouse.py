"""Warehouse access for every extract: SQLAlchemy, identifier quoting, streamed reads, and the canonical
frames (``entity_id``, ``event_ts``, ``snapshot_ts``, ``label``) made from whatever the source returns.

SQLite keeps timestamps as text: text columns that hold ISO timestamps are recognised and parsed here,
and SQL comparisons on them use ISO date prefixes (the exact instant is applied after parsing).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import sqlalchemy as sa
from mlcontract.names import ENTITY

from features.errors import ExtractError

ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$"
DEFAULT_BATCH_ROWS = 500_000


def as_naive_utc(value: date | datetime | str | None) -> datetime | None:
    """Midnight (naive UTC) of a date, or the datetime itself in naive UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


class Warehouse:
    """One SQLAlchemy engine on the warehouse; :meth:`close` disposes of it."""

    def __init__(self, uri: str):
        self.engine = sa.create_engine(uri)
        self.preparer = self.engine.dialect.identifier_preparer
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def quote(self, identifier: str) -> str:
        return ".".join(self.preparer.quote(part) for part in identifier.split("."))

    def relation(self, kind: str, table: str | None, query: str | None) -> str:
        """``FROM`` target for a table or a query, after checking that the table exists."""
        if table:
            schema, _, name = table.rpartition(".")
            if not sa.inspect(self.engine).has_table(name, schema=schema or None):
                raise ExtractError(f"{kind} table {table!r} not found in the warehouse")
            return self.quote(table)
        if not query:
            raise ExtractError(f"give exactly one of --{kind}-table or --{kind}-query")
        return f"({query.strip().rstrip(';')})"

    def columns(self, kind: str, relation: str) -> list[str]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(sa.text(f"SELECT * FROM {relation} AS src WHERE 1 = 0")).keys())
        except sa.exc.DBAPIError as error:
            raise ExtractError(f"{kind} source failed: {error.orig}") from error

    def upper_bound(self, moment: datetime) -> Any:
        """An upper bound on a timestamp column for SQL: the instant itself.

        SQLite keeps timestamps as text: there, the date prefix of the next day, which holds for every ISO
        layout; it lets more rows through, and the exact bound is applied after parsing.
        """
        if self.is_sqlite:
            return (moment + timedelta(days=1)).strftime("%Y-%m-%d")
        return moment

    def lower_bound(self, moment: datetime) -> Any:
        """A lower bound on a timestamp column for SQL; on SQLite its date prefix (refined after parsing)."""
        return moment.strftime("%Y-%m-%d") if self.is_sqlite else moment

    def stream(self, sql: str, params: dict[str, Any], batch_rows: int) -> Iterator[tuple[list[str], list]]:
        """Rows in batches, with a server-side cursor: the result is never held in memory at once."""
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                sa.text(sql), params
            )
            keys = list(result.keys())
            for rows in result.partitions(batch_rows):
                yield keys, rows


def require_columns(kind: str, available: list[str], wanted: dict[str, str]) -> None:
    """Every wanted column (name -> the option it comes from) is in the source, or an error naming it."""
    for column, option in wanted.items():
        if column not in available:
            raise ExtractError(
                f"{kind} source has no column {column!r}{f' (from {option})' if option else ''}; "
                f"columns are: {', '.join(available)}"
            )


def parse_timestamps(series: pl.Series, column: str) -> pl.Series:
    """Any timestamp representation (datetime, tz-aware, date, ISO text) → naive UTC Datetime(us)."""
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return series.cast(pl.Datetime("us"))
    if dtype in (pl.Date, pl.Null):
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


class Canonicaliser:
    """Turns raw batches into canonical frames with one schema, decided by the first non-empty batch.

    Only the entity key (Utf8) and the timestamps are converted; every other column, the label included,
    keeps the type the warehouse gave it (a label's task is decided by the build, not here). A later batch
    whose values do not fit that schema is an error naming the user's column, never a silent cast.
    """

    def __init__(self, renames: dict[str, str], timestamps: set[str], is_sqlite: bool):
        self.renames = renames
        self.source_names = {canonical: user for user, canonical in renames.items()}
        self.timestamps = timestamps
        self.is_sqlite = is_sqlite
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
                if dtype == pl.Utf8 and name != ENTITY and name not in self.timestamps:
                    sample = frame[name].drop_nulls().head(1000)
                    if sample.len() and sample.str.contains(ISO_TIMESTAMP).all():
                        self.text_timestamps.add(name)
        columns = []
        for name, dtype in frame.schema.items():
            series = frame[name]
            if name == ENTITY:
                series = series.cast(pl.Utf8)
            elif name in self.timestamps or name in self.text_timestamps or isinstance(dtype, pl.Datetime):
                series = parse_timestamps(series, self.source_names.get(name, name))
            elif isinstance(dtype, pl.Decimal):
                series = series.cast(pl.Float64)
            columns.append(series)
        frame = pl.DataFrame(columns)
        if self.schema is None:
            if frame.height:
                self.schema = dict(frame.schema)
            return frame
        return pl.DataFrame([self._fit(frame[name], dtype) for name, dtype in self.schema.items()])

    def _fit(self, series: pl.Series, dtype: pl.DataType) -> pl.Series:
        """``series`` in the schema's type, or an error when a value would be lost on the way."""
        if series.dtype == dtype or series.dtype == pl.Null:
            return series.cast(dtype)
        fitted = series.cast(dtype, strict=False)
        lost = series.is_not_null() & (fitted.is_null() | ~fitted.cast(series.dtype, strict=False).eq_missing(series))
        if lost.any():
            column = self.source_names.get(series.name, series.name)
            raise ExtractError(
                f"column {column!r} changes type between rows: {dtype} at first, then {series.dtype} "
                f"(e.g. {series.filter(lost)[0]!r}); cast it to one type in a query"
            )
        return fitted

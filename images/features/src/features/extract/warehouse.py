"""Warehouse access for every extract: a read-only session, identifier quoting, streamed reads (Arrow-native
where a driver exists, SQLAlchemy otherwise), driver errors as one line, and the canonical frames
(``entity_id``, ``event_ts``, ``snapshot_ts``, ``label``) made from whatever the source returns.

Read only, twice over: a query Param must be one read-only query (:mod:`features.extract.query`), and every
read runs in a read-only session (PostgreSQL: ``BEGIN READ ONLY`` for each transaction and a read-only
default; SQLite: ``PRAGMA query_only``; MySQL: a read-only session). The pipeline's role should be read
only as well (README).

Reads: SQLite and PostgreSQL through ADBC (Arrow record batches, no Python object per value), other
dialects through SQLAlchemy with a server-side cursor. Both give the same frames: an Arrow batch is
re-chunked to ``batch_rows`` and typed as polars types Python rows of those values (integers Int64, an
all-NULL column Null, numeric through Decimal...), so both paths write the same files. Where that is not
known to hold (a type outside the list), the read goes through SQLAlchemy.

SQLite keeps timestamps as text: text columns that hold ISO timestamps are recognised and parsed here,
and SQL comparisons on them use ISO date prefixes (the exact instant is applied after parsing). Rows SQL
cannot compare (text that does not start with a date, numbers) pass the SQL filter and are parsed: a value
that is not a timestamp is an error naming the column, never silently dropped.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import sqlalchemy as sa
from mlcontract.names import ENTITY
from sqlglot import exp

from features.errors import ExtractError
from features.extract.query import dialect_of, read_only_query

log = logging.getLogger(__name__)

ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$"
ISO_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"
SQLITE_LAYOUT = "%Y-%m-%d %H:%M:%S%.f"  # SQLAlchemy's, and the most common ISO layout
ISO_LENGTHS = [10, 16, 19, 21, 22, 23, 24, 25, 26]  # date, + hh:mm, + :ss, + 1 to 6 decimals
DEFAULT_BATCH_ROWS = 500_000
READERS = ("auto", "sqlalchemy")
# The statement that makes a new connection's session read only, per SQLAlchemy backend. PostgreSQL also
# begins every transaction READ ONLY (the engine's postgresql_readonly option).
READ_ONLY_SESSION = {
    "sqlite": "PRAGMA query_only = ON",
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}
# Arrow types whose polars form equals that of the same values as Python rows (see like_python_rows);
# PostgreSQL by the server's type name (the ADBC driver's field metadata), SQLite by the inferred type.
ARROW_POSTGRESQL_TYPES = {"int2", "int4", "int8", "float4", "float8", "numeric", "bool", "text", "varchar",
                          "bpchar", "timestamp", "timestamptz", "date"}
ARROW_SQLITE_TYPES = {"int64", "double", "string", "large_string"}
PG_TYPE_KEY = b"POSTGRESQL:type"


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


def driver_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a database driver or the Arrow stream raises (ADBC's when it is installed)."""
    import pyarrow as pa

    # ADBC raises its own errors, or pyarrow's from inside a record batch stream
    errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError, OSError, pa.ArrowException)
    try:
        import adbc_driver_manager

        errors += (adbc_driver_manager.Error,)
    except ImportError:  # pragma: no cover - the features image has it
        pass
    return errors


def driver_message(error: BaseException, secret: str | None = None) -> str:
    """The first line of a driver error, without the driver's prefixes (and never ``secret``)."""
    error = getattr(error, "orig", None) or error  # SQLAlchemy wraps the DBAPI error
    text = str(error).strip()
    found = re.search(r"(?:ERROR|FATAL):\s+(.*)", text)  # libpq through ADBC: "IO: [libpq] ... ERROR:  msg"
    line = (found.group(1) if found else text).splitlines()[0].strip() if text else ""
    # ADBC's status and driver prefixes: "IO: [SQLite] Failed to step query: integer overflow"
    line = re.sub(r"^(?:[A-Z_]+: )?(?:\[\w+\] )?(?:Failed to \w+ query: )?", "", line) or type(error).__name__
    return line.replace(secret, "***") if secret else line


class Warehouse:
    """One read-only SQLAlchemy engine on the warehouse (and ADBC for the bulk reads where it can);
    :meth:`close` disposes of it. ``reader="sqlalchemy"`` reads everything through SQLAlchemy."""

    def __init__(self, uri: str, reader: str = "auto"):
        if reader not in READERS:
            raise ExtractError(f"reader {reader!r} is not one of {', '.join(READERS)}")
        try:
            self.url = sa.engine.make_url(uri)
        except sa.exc.ArgumentError:
            raise ExtractError(
                "the warehouse URI (env WAREHOUSE_URI) is not a database URL such as "
                "postgresql+psycopg://user@host/db or sqlite:///path/to/file.db"
            ) from None
        self.backend = self.url.get_backend_name()
        self.dialect = dialect_of(self.backend)
        self.is_sqlite = self.backend == "sqlite"
        options = {"postgresql_readonly": True} if self.backend == "postgresql" else {}
        try:
            self.engine = sa.create_engine(self.url, execution_options=options)
        except (sa.exc.NoSuchModuleError, ImportError) as error:
            raise ExtractError(
                f"the warehouse URI names a {self.url.drivername!r} database, which this image cannot "
                f"reach ({driver_message(error)})"
            ) from None
        sa.event.listen(self.engine, "connect", self._read_only_session)
        if self.backend not in READ_ONLY_SESSION:
            log.warning("no read-only session for a %s warehouse: give the pipeline a read-only role", self.backend)
        self.preparer = self.engine.dialect.identifier_preparer
        self.arrow_uri = arrow_uri(self.url) if reader == "auto" else None
        log.info("bulk reads through %s", "ADBC (Arrow)" if self.arrow_uri else "SQLAlchemy")

    def _read_only_session(self, dbapi_connection: Any, _record: Any) -> None:
        statement = READ_ONLY_SESSION.get(self.backend)
        if statement:
            cursor = dbapi_connection.cursor()
            cursor.execute(statement)
            cursor.close()
            if not self.is_sqlite:
                dbapi_connection.commit()  # a session setting, kept after its transaction

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def errors(self, source: str) -> Iterator[None]:
        """Turn a driver error into one line naming ``source`` (the user's table or query Param)."""
        try:
            yield
        except driver_errors() as error:
            raise ExtractError(f"{source}: reading from the warehouse failed: {driver_message(error, self.url.password)}") from None

    def quote(self, identifier: str) -> str:
        return ".".join(self.preparer.quote(part) for part in identifier.split("."))

    def relation(self, kind: str, table: str | None, query: str | None) -> str:
        """``FROM`` target for a table or a query: the table after checking that it exists, the query
        after checking that it is one read-only query (in parentheses, on lines of their own so that a
        trailing ``--`` comment cannot swallow the closing one)."""
        if table:
            schema, _, name = table.rpartition(".")
            with self.errors(f"{kind} table {table!r}"):
                found = sa.inspect(self.engine).has_table(name, schema=schema or None)
            if not found:
                raise ExtractError(f"{kind} table {table!r} not found in the warehouse")
            return self.quote(table)
        if not query:
            raise ExtractError(f"give exactly one of --{kind}-table or --{kind}-query")
        return f"(\n{read_only_query(query, query_param(kind), self.backend)}\n)"

    def columns(self, source: str, relation: str) -> list[str]:
        with self.errors(source), self.engine.connect() as conn:
            names = list(self._execute(conn, f"SELECT * FROM {relation} AS src WHERE 1 = 0").keys())
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ExtractError(f"{source} returns more than one column named {', '.join(map(repr, repeated))}")
        return names

    @staticmethod
    def _execute(conn: sa.Connection, sql: str, **options: Any) -> sa.CursorResult:
        # no bind parameters: the SQL is passed to the driver as it is (a ':' or '%' in a query is text)
        return conn.execution_options(no_parameters=True, **options).exec_driver_sql(sql)

    def timestamp(self, moment: datetime) -> str:
        """A SQL literal of ``moment`` (values made here, never the user's) for the warehouse's dialect."""
        text = moment.isoformat(sep=" ")
        return exp.cast(exp.Literal.string(text), exp.DataType.build("timestamp")).sql(dialect=self.dialect)

    def before(self, column: str, moment: datetime, *, inclusive: bool = False) -> str:
        """SQL condition: ``src.column`` before ``moment`` (or at it), plus the rows SQL cannot compare
        (NULL, and on SQLite values that are not text starting with an ISO date): the exact bound is
        applied after parsing, where a value that is not a timestamp is an error."""
        col = f"src.{self.quote(column)}"
        if self.is_sqlite:
            # text compares by ISO date prefix: the next day's holds for every ISO layout
            bound = (moment + timedelta(days=1)).strftime("%Y-%m-%d")
            return f"({col} < '{bound}' OR {self.not_iso_text(col)})"
        return f"({col} {'<=' if inclusive else '<'} {self.timestamp(moment)} OR {col} IS NULL)"

    def on_day(self, column: str, day: datetime) -> str:
        """SQL condition: ``src.column`` on the date of ``day`` (on SQLite by date prefix, plus the values
        that are not ISO text, so that parsing sees them); the exact day is checked after parsing."""
        col = f"src.{self.quote(column)}"
        if self.is_sqlite:
            start, end = day.strftime("%Y-%m-%d"), (day + timedelta(days=1)).strftime("%Y-%m-%d")
            return f"(({col} >= '{start}' AND {col} < '{end}') OR ({col} IS NOT NULL AND {self.not_iso_text(col)}))"
        start_ts, end_ts = self.timestamp(day), self.timestamp(day + timedelta(days=1))
        return f"({col} >= {start_ts} AND {col} < {end_ts})"

    @staticmethod
    def not_iso_text(col: str) -> str:
        return f"({col} IS NULL OR typeof({col}) <> 'text' OR {col} NOT GLOB '{ISO_DATE_GLOB}')"

    def stream(self, sql: str, batch_rows: int, source: str) -> Iterator[pl.DataFrame]:
        """The result in frames of ``batch_rows`` rows (the last one shorter; none when it is empty),
        never held in memory at once; a driver error is one line naming ``source``."""
        with self.errors(source):
            if self.arrow_uri is None:
                yield from self._sqlalchemy_stream(sql, batch_rows)
                return
            done = 0
            try:
                for frame in self._arrow_stream(sql, batch_rows):
                    yield frame
                    done += frame.height
                return
            except ArrowFallback as reason:
                log.info("%s: %s; reading it through SQLAlchemy", source, reason)
            except driver_errors() as error:
                if not (self.is_sqlite and "Type mismatch" in str(error)):
                    raise
                # SQLite types a column by its first batch; a later value of another storage class is
                # typed the way the SQLAlchemy path types it, from the first row not yet written
                log.info("%s: a column changes SQLite storage class after %s rows; reading on through SQLAlchemy",
                         source, f"{done:,}")
            yield from self._sqlalchemy_stream(sql, batch_rows, skip=-(-done // batch_rows))

    def _sqlalchemy_stream(self, sql: str, batch_rows: int, skip: int = 0) -> Iterator[pl.DataFrame]:
        with self.engine.connect() as conn:
            result = self._execute(conn, sql, stream_results=True, yield_per=batch_rows)
            keys = list(result.keys())
            for index, rows in enumerate(result.partitions(batch_rows)):
                if index >= skip:
                    yield rows_frame(keys, rows)

    def _arrow_stream(self, sql: str, batch_rows: int) -> Iterator[pl.DataFrame]:
        import pyarrow as pa

        with self.arrow_statement(batch_rows) as statement:
            statement.set_sql_query(sql)
            stream, _ = statement.execute_query()
            reader = pa.RecordBatchReader.from_stream(stream)
            try:
                numeric = self._check_arrow_schema(reader.schema)
                pending: list[pa.RecordBatch] = []
                held = 0
                # a part's rows read ahead: the driver reads on while the caller converts and writes a part
                for batch in read_ahead(reader, batch_rows):
                    pending.append(batch)
                    held += batch.num_rows
                    while held >= batch_rows:
                        table = pa.Table.from_batches(pending)
                        yield like_python_rows(table.slice(0, batch_rows), numeric)
                        rest = table.slice(batch_rows)
                        pending, held = rest.to_batches(), rest.num_rows
                if held:
                    yield like_python_rows(pa.Table.from_batches(pending), numeric)
            finally:
                reader.close()  # before its statement closes

    def _check_arrow_schema(self, schema: Any) -> set[str]:
        """The numeric (PostgreSQL NUMERIC) columns; ArrowFallback when a type is outside the known list."""
        numeric = set()
        for field in schema:
            if self.is_sqlite:
                kind = str(field.type)
                if kind not in ARROW_SQLITE_TYPES:
                    raise ArrowFallback(f"column {field.name!r} is read as {kind}")
            else:
                kind = (field.metadata or {}).get(PG_TYPE_KEY, b"?").decode()
                if kind not in ARROW_POSTGRESQL_TYPES:
                    raise ArrowFallback(f"column {field.name!r} has type {kind}")
                if kind == "numeric":
                    numeric.add(field.name)
        return numeric

    @contextmanager
    def arrow_statement(self, batch_rows: int) -> Iterator[Any]:
        """An ADBC statement in a read-only session (SQLite: query_only; PostgreSQL: a READ ONLY transaction,
        rolled back when the connection closes). The driver manager's own API: its DBAPI layer would import
        pandas into every extract process."""
        import adbc_driver_manager as adbc

        if self.arrow_uri is None:
            raise ExtractError(f"no Arrow driver for a {self.backend} warehouse")
        with ExitStack() as stack:
            if self.is_sqlite:
                import adbc_driver_sqlite as driver
            else:
                import adbc_driver_postgresql as driver  # type: ignore[no-redef]
            database = driver.connect(self.arrow_uri)
            stack.callback(database.close)
            connection = adbc.AdbcConnection(database)
            stack.callback(connection.close)
            statement = adbc.AdbcStatement(connection)
            stack.callback(statement.close)
            if self.is_sqlite:
                statement.set_sql_query(READ_ONLY_SESSION["sqlite"])
                statement.execute_update()
                # SQLite types each column from the first batch: the same rows as a SQLAlchemy batch
                statement.set_options(**{driver.StatementOptions.BATCH_ROWS.value: str(batch_rows)})
            else:
                statement.set_sql_query("BEGIN READ ONLY")  # the connection is in autocommit mode till here
                statement.execute_update()
            yield statement


def read_ahead(batches: Iterable[Any], max_rows: int) -> Iterator[Any]:
    """Record ``batches`` read ahead in a thread: the driver fetches (without the GIL) while the caller converts
    and writes. The thread fetches another batch while fewer than ``max_rows`` rows wait, so up to about
    ``max_rows`` rows wait (one batch at least, however large): given a part's rows, the driver keeps reading
    while the caller writes a whole part, whatever the size of the driver's batches, and memory stays bounded.
    The thread ends with the iteration, and before it when the caller stops early."""
    waiting: deque[tuple[Any, BaseException | None]] = deque()
    changed = threading.Condition()
    held = 0  # rows waiting
    stop = False
    end = object()

    def room() -> bool:  # for another batch (or the caller has stopped)
        return stop or held < max_rows

    def fetch() -> None:
        nonlocal held
        error = None
        try:
            for batch in batches:
                with changed:
                    waiting.append((batch, None))
                    held += batch.num_rows
                    changed.notify_all()
                    changed.wait_for(room)
                    if stop:
                        return
        except Exception as failure:  # noqa: BLE001 (any driver error: handed to the caller, raised there)
            error = failure
        with changed:
            waiting.append((end, error))
            changed.notify_all()

    thread = threading.Thread(target=fetch, name="extract-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            with changed:
                changed.wait_for(lambda: waiting)
                batch, error = waiting.popleft()
                if batch is not end:
                    held -= batch.num_rows
                changed.notify_all()
            if error is not None:
                raise error
            if batch is end:
                return
            yield batch
    finally:
        with changed:
            stop = True
            changed.notify_all()
        thread.join()


class ArrowFallback(Exception):
    """The Arrow read would not type a column as the SQLAlchemy path does; the message says which."""


def arrow_uri(url: sa.URL) -> str | None:
    """What the ADBC driver connects to for this warehouse, or None (no ADBC driver: SQLAlchemy)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database
        if not database or database == ":memory:":
            return None
        query = {k: v for k, v in url.query.items() if k != "uri"}
        if "uri" in url.query:  # sqlite:///file:path?mode=ro&uri=true
            return database + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        return database
    if backend == "postgresql":
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    return None


def rows_frame(keys: list[str], rows: list) -> pl.DataFrame:
    """A frame of Python rows (what a DBAPI cursor returns), each column typed from all its values."""
    return pl.DataFrame(
        [list(column) for column in zip(*rows)] if rows else [[] for _ in keys],
        schema=keys,
        orient="col",
        strict=False,
        infer_schema_length=None,
    )


def like_python_rows(table: Any, numeric: set[str]) -> pl.DataFrame:
    """An Arrow table as :func:`rows_frame` types the same values as Python rows: integers Int64, float4
    through its text (as the driver reads it), NUMERIC through Decimal, a column with only NULLs Null."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    columns = []
    for series in frame.iter_columns():
        if series.null_count() == series.len():
            series = pl.Series(series.name, [None] * series.len(), dtype=pl.Null)
        elif series.name in numeric:
            values = [None if v is None else Decimal(v) for v in series.to_list()]
            series = rows_frame([series.name], [(v,) for v in values]).to_series()
        elif series.dtype.is_integer():
            series = series.cast(pl.Int64)
        elif series.dtype == pl.Float32:
            series = series.cast(pl.Utf8).cast(pl.Float64)
        columns.append(series)
    return pl.DataFrame(columns)


def query_param(kind: str) -> str:
    """How messages name a relation's query Param (the DAG Param; the CLI option is --{kind}-query)."""
    return f"the {kind} query (Param {kind}_query)"


def source_name(kind: str, table: str | None) -> str:
    """How messages name a relation: its table, or its query Param."""
    return f"{kind} table {table!r}" if table else query_param(kind)


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
        fast = parse_iso_text(series)
        if fast is not None:
            return fast
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
            with_time = text.str.to_datetime(SQLITE_LAYOUT, strict=False, time_unit="us")
            minutes = text.str.to_datetime("%Y-%m-%d %H:%M", strict=False, time_unit="us")
            day = text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us"))
            parsed = pl.select(pl.coalesce(with_time, minutes, day)).to_series()
        bad = parsed.is_null() & series.is_not_null()
        if bad.any():
            raise ExtractError(
                f"column {column!r} has values that are not timestamps ({int(bad.sum()):,} in a batch of "
                f"{series.len():,} rows, e.g. {series.filter(bad)[0]!r}); fix them or leave them out in a query"
            )
        return parsed.alias(series.name)
    raise ExtractError(f"column {column!r} has type {dtype}, expected a timestamp")


def parse_iso_text(series: pl.Series) -> pl.Series | None:
    """The common case in one pass of Arrow's ISO parser (about 10x polars' strptime): every value is a date,
    a date and hh:mm, or a date and hh:mm:ss with up to 6 decimals (' ' or 'T' between). None when a value
    is not, and the general parser decides. The lengths keep out what Arrow reads and the general parser
    does not ('2026-01-01 10'), so both give the same result."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not series.str.len_bytes().is_in(ISO_LENGTHS).fill_null(True).all():
        return None
    try:
        parsed = pc.cast(series.to_arrow(), pa.timestamp("us"))
    except pa.ArrowInvalid:
        return None
    return pl.Series(series.name, parsed)


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

    def empty(self, keys: list[str]) -> pl.DataFrame:
        """The canonical frame of no rows, for a source that returned none."""
        return self(rows_frame(keys, []))

    def __call__(self, raw: pl.DataFrame) -> pl.DataFrame:
        """The canonical frame of one batch as the warehouse returned it (:meth:`Warehouse.stream`)."""
        frame = raw.rename(self.renames)
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

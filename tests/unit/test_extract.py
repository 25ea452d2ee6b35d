"""Warehouse → canonical parquet: schema, cutoff, query sources, clear errors, idempotent reruns; the
realised labels of a score date (``extract-labels``); a query Param is one read-only query, reads run in a
read-only session, and the Arrow-native reader writes exactly what the SQLAlchemy reader writes."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest
import sqlalchemy as sa
from features import synth
from features.cli import main
from features.errors import ExtractError
from features.extract.labels import extract_labels
from features.extract.query import read_only_query
from features.extract.scoring import extract_scoring
from features.extract.training import extract
from features.extract.warehouse import READERS, Warehouse
from mlcontract.errors import SourceError
from mlcontract.manifests import ExtractManifest, LabelsManifest
from mlcontract.source import LabelSource, TrainingSource, mask_uri

CUTOFF = datetime(2026, 8, 18)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('wh') / 'wh.db'}"
    synth.generate(synth.SynthConfig(customers=600), uri)
    return uri


def _events(out) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/events/part-*.parquet")


def test_canonical_schema_and_cutoff(warehouse, tmp_path):
    out = str(tmp_path / "extract")
    manifest = extract(
        warehouse, out, TrainingSource(entities_table="customers"), cutoff=CUTOFF, batch_rows=5_000
    )
    events = _events(out)
    labels = pl.read_parquet(f"{out}/labels.parquet")
    entities = pl.read_parquet(f"{out}/entities.parquet")
    assert events.schema == pl.Schema(
        {
            "entity_id": pl.Utf8,
            "event_ts": pl.Datetime("us"),
            "event_type": pl.Utf8,
            "channel": pl.Utf8,
            "amount": pl.Float64,
        }
    )
    # the label keeps the warehouse's type (an INTEGER column here); the build encodes it per task
    assert labels.schema == pl.Schema(
        {"entity_id": pl.Utf8, "snapshot_ts": pl.Datetime("us"), "label": pl.Int64}
    )
    assert entities.columns == ["entity_id", "signup_ts", "plan", "region"]
    assert entities.schema["signup_ts"] == pl.Datetime("us")
    assert events["event_ts"].max() < CUTOFF
    assert labels["snapshot_ts"].max() == CUTOFF  # snapshots up to and including the cutoff
    with sa.create_engine(warehouse).connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM events WHERE event_ts < '2026-08-18'")).scalar()
    assert manifest.rows == {"events": before, "labels": labels.height, "entities": 600}
    assert events.height == before
    assert manifest.parts == len(list((tmp_path / "extract" / "events").glob("part-*.parquet"))) > 1
    assert events.sort("entity_id", "event_ts").equals(events)  # deterministic order
    assert (
        manifest.snapshots == sorted(manifest.snapshots)
        and manifest.snapshots[-1] == CUTOFF.isoformat()
    )
    assert manifest.cutoff == CUTOFF.isoformat()
    assert "uri" not in str(manifest.source).lower() and "sqlite" not in str(manifest.model_dump())
    assert ExtractManifest.read(out).content_hash == manifest.content_hash


def test_rerun_is_idempotent_and_leaves_no_stale_parts(warehouse, tmp_path):
    out = str(tmp_path / "extract")
    first = extract(warehouse, out, cutoff=CUTOFF, batch_rows=3_000)
    again = extract(warehouse, out, cutoff=CUTOFF, batch_rows=3_000)
    assert first.content_hash == again.content_hash
    fewer = extract(warehouse, out, cutoff=CUTOFF, batch_rows=50_000)
    parts = sorted(p.name for p in (tmp_path / "extract" / "events").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(fewer.parts)]
    assert fewer.parts < first.parts
    assert _events(out).height == first.rows["events"]
    assert not [p for p in (tmp_path / "extract").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_query_source_with_custom_column_names(warehouse, tmp_path):
    out = str(tmp_path / "extract")
    source = TrainingSource(
        events_table=None,
        events_query="SELECT customer_id AS cust, event_ts AS happened_at, amount FROM events "
        "WHERE event_type = 'purchase'",
        labels_table=None,
        labels_query="SELECT customer_id AS cust, snapshot_ts AS as_of, churned AS y FROM churn_labels",
        entity_key="cust",
        timestamp_column="happened_at",
        snapshot_column="as_of",
        label_column="y",
    )
    manifest = extract(warehouse, out, source, cutoff=CUTOFF)
    events = _events(out)
    assert events.columns == ["entity_id", "event_ts", "amount"]
    assert (events["amount"] > 0).all() and events["event_ts"].max() < CUTOFF
    labels = pl.read_parquet(f"{out}/labels.parquet")
    assert labels.columns == ["entity_id", "snapshot_ts", "label"] and set(labels["label"].unique()) <= {0, 1}
    assert manifest.source["events_query"].startswith("SELECT customer_id AS cust")


def test_missing_column_or_table_names_it(warehouse, tmp_path):
    with pytest.raises(
        ExtractError, match=r"events source has no column 'ts_typo' \(from --timestamp-column\)"
    ):
        extract(warehouse, str(tmp_path / "a"), TrainingSource(timestamp_column="ts_typo"))
    with pytest.raises(ExtractError, match="labels table 'nope' not found"):
        extract(warehouse, str(tmp_path / "b"), TrainingSource(labels_table="nope"))
    with pytest.raises(SourceError, match="not a plain SQL identifier"):
        TrainingSource(entity_key="id; DROP TABLE events")
    with pytest.raises(SourceError, match="exactly one of --events-table or --events-query"):
        TrainingSource(events_query="SELECT 1")
    assert not (tmp_path / "a" / "manifest.json").exists()


def sqlite_warehouse(path, *statements: str) -> str:
    """A small SQLite warehouse made by ``statements``; returns its URI."""
    uri = f"sqlite:///{path}"
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()
    return uri


def test_text_timestamps_in_many_layouts_parse(tmp_path):
    uri = sqlite_warehouse(
        tmp_path / "odd.db",
        "CREATE TABLE ev (id INTEGER, ts TEXT, v REAL)",
        "CREATE TABLE lb (id INTEGER, snap TEXT, y INTEGER)",
        "INSERT INTO ev VALUES (2, '2026-01-02T03:04:05', 1.5), (1, '2026-01-01 10:00:00.250000', 2), "
        "(1, '2026-01-03', 0), (3, '2026-01-05 00:00:00', 1)",
        "INSERT INTO lb VALUES (1, '2026-01-04', 1), (2, '2026-01-05 00:00:00', 0)",
    )
    source = TrainingSource(
        events_table="ev",
        labels_table="lb",
        entity_key="id",
        timestamp_column="ts",
        snapshot_column="snap",
        label_column="y",
    )
    extract(uri, str(tmp_path / "out"), source, cutoff=datetime(2026, 1, 5))
    events = _events(tmp_path / "out")
    assert events["entity_id"].to_list() == ["1", "1", "2"]
    assert events["event_ts"].to_list() == [
        datetime(2026, 1, 1, 10, 0, 0, 250000),
        datetime(2026, 1, 3),
        datetime(2026, 1, 2, 3, 4, 5),
    ]
    labels = pl.read_parquet(tmp_path / "out" / "labels.parquet")
    assert labels["snapshot_ts"].to_list() == [datetime(2026, 1, 4), datetime(2026, 1, 5)]


def test_uri_password_is_masked():
    assert "s3cret" not in mask_uri("postgresql+psycopg://user:s3cret@db:5432/wh")
    assert mask_uri("postgresql+psycopg://user:s3cret@db:5432/wh").endswith("@db:5432/wh")


# --- extract-labels: the realised labels of one snapshot date ------------------------------------------

LABELS_SCHEMA = pl.Schema({"entity_id": pl.Utf8, "label": pl.Int8})


@pytest.fixture(scope="module")
def labels_warehouse(tmp_path_factory) -> tuple[str, synth.SynthConfig]:
    config = synth.SynthConfig(customers=300, events_per_customer=5, snapshots=3)
    uri = f"sqlite:///{tmp_path_factory.mktemp('labels') / 'wh.db'}"
    synth.generate(config, uri)
    return uri, config


def test_labels_of_the_score_date_only(labels_warehouse, tmp_path):
    uri, config = labels_warehouse
    day = config.snapshot_dates[-1].date()
    manifest = extract_labels(uri, str(tmp_path / "out"), day)
    labels = pl.read_parquet(manifest.output("labels"))
    with sa.create_engine(uri).connect() as conn:
        expected = conn.execute(
            sa.text("SELECT customer_id, churned FROM churn_labels WHERE snapshot_ts LIKE :day ORDER BY 1"),
            {"day": f"{day.isoformat()}%"},
        ).all()
    assert labels.schema == LABELS_SCHEMA
    assert labels.rows() == [(key, label) for key, label in expected] and labels.height > 0
    assert LabelsManifest.read(str(tmp_path / "out")) == manifest
    assert manifest.rows == {"labels": labels.height} and manifest.score_date == day.isoformat()
    assert manifest.source["labels_table"] == "churn_labels"


def test_no_labels_yet_is_an_empty_file_with_the_schema(labels_warehouse, tmp_path):
    uri, _ = labels_warehouse
    manifest = extract_labels(uri, str(tmp_path / "out"), date(2030, 1, 1))
    labels = pl.read_parquet(manifest.output("labels"))
    assert labels.height == 0 and labels.schema == LABELS_SCHEMA and manifest.rows == {"labels": 0}


def test_text_timestamps_and_a_query_source(tmp_path):
    uri = sqlite_warehouse(
        tmp_path / "odd.db",
        "CREATE TABLE outcomes (id INTEGER, at TEXT, y TEXT)",
        "INSERT INTO outcomes VALUES (1, '2026-03-01T00:00:00', '1'), (2, '2026-03-01 23:59:59.5', '0'),"
        " (3, '2026-03-02', '1'), (4, '2026-02-28 23:00:00', '1')",
    )
    source = LabelSource(labels_table=None, labels_query="SELECT id AS who, at, y FROM outcomes",
                         entity_key="who", snapshot_column="at", label_column="y")
    manifest = extract_labels(uri, str(tmp_path / "out"), date(2026, 3, 1), source)
    assert pl.read_parquet(manifest.output("labels")).rows() == [("1", 1), ("2", 0)]


def test_a_missing_column_is_named(labels_warehouse, tmp_path):
    uri, config = labels_warehouse
    with pytest.raises(ExtractError, match=r"labels source has no column 'outcome' \(from --label-column\)"):
        extract_labels(uri, str(tmp_path / "out"), date(2026, 9, 1), LabelSource(label_column="outcome"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_label_that_is_not_0_or_1_is_an_error(tmp_path):
    uri = sqlite_warehouse(
        tmp_path / "bad.db",
        "CREATE TABLE churn_labels (customer_id TEXT, snapshot_ts TEXT, churned INTEGER)",
        "INSERT INTO churn_labels VALUES ('a', '2026-03-01', 1), ('b', '2026-03-01', 2)",
    )
    with pytest.raises(ExtractError, match="label column 'churned' must hold 0/1"):
        extract_labels(uri, str(tmp_path / "out"), date(2026, 3, 1))


def test_the_cli_command(labels_warehouse, tmp_path, monkeypatch, capsys):
    uri, config = labels_warehouse
    monkeypatch.setenv("WAREHOUSE_URI", uri)
    day = config.snapshot_dates[0].date().isoformat()
    assert main(["extract-labels", "--score-date", day, "--out", str(tmp_path / "out")]) == 0
    assert LabelsManifest.read(str(tmp_path / "out")).score_date == day
    assert main(["extract-labels", "--score-date", day, "--label-column", "nope", "--out", str(tmp_path / "x")]) == 1
    assert "no column 'nope' (from --label-column)" in capsys.readouterr().err


def test_labels_keep_the_warehouse_type_and_the_manifest_names_the_columns(tmp_path):
    uri = sqlite_warehouse(
        tmp_path / "typed.db",
        "CREATE TABLE ev (who TEXT, at TEXT, amount REAL)",
        "CREATE TABLE lb (who TEXT, cutoff_ts TEXT, y REAL, grade TEXT, ok BOOLEAN)",
        "INSERT INTO ev VALUES ('a', '2026-01-01', 1.0)",
        "INSERT INTO lb VALUES ('a', '2026-01-02', 0.7, 'yes', 1), ('b', '2026-01-02', 1.0, 'no', 0)",
    )
    columns = {"entity_key": "who", "timestamp_column": "at", "snapshot_column": "cutoff_ts"}
    labels = {}
    for label in ("y", "grade", "ok"):
        source = TrainingSource(events_table="ev", labels_table="lb", label_column=label, **columns)
        manifest = extract(uri, str(tmp_path / label), source)
        labels[label] = pl.read_parquet(tmp_path / label / "labels.parquet")["label"].to_list()
    # 0.7 is not silently a 0 any more: the build decides per task what a label may be
    assert labels == {"y": [0.7, 1.0], "grade": ["yes", "no"], "ok": [1, 0]}
    assert manifest.kind == "events"
    assert manifest.columns == {"entity_id": "who", "event_ts": "at", "snapshot_ts": "cutoff_ts", "label": "ok"}


def test_a_column_that_changes_type_between_batches_is_named(tmp_path):
    uri = sqlite_warehouse(
        tmp_path / "mixed.db",
        "CREATE TABLE ev (who TEXT, at TEXT, qty)",
        "CREATE TABLE lb (who TEXT, cutoff_ts TEXT, y INTEGER)",
        "INSERT INTO ev VALUES ('a', '2026-01-01', 1), ('b', '2026-01-01', 2.5)",
        "INSERT INTO lb VALUES ('a', '2026-01-02', 1)",
    )
    source = TrainingSource(events_table="ev", labels_table="lb", entity_key="who", timestamp_column="at",
                            snapshot_column="cutoff_ts", label_column="y")
    with pytest.raises(ExtractError, match=r"column 'qty' changes type between rows: Int64 at first, then Float64 "
                                           r"\(e\.g\. 2\.5\); cast it to one type in a query"):
        extract(uri, str(tmp_path / "out"), source, batch_rows=1)


# --- read-only queries: one read-only statement, parsed in the warehouse's dialect ---------------------

REFUSED = [
    # the attack of issue 10: break out of the parentheses the query is pasted into
    ("SELECT * FROM events) AS x; COMMIT; DELETE FROM customers; SELECT * FROM (SELECT 1", "several statements"),
    ("SELECT 1; SELECT 2", "several statements"),
    ("DELETE FROM customers", "not a DELETE statement"),
    ("DROP TABLE customers", "not a DROP statement"),
    ("CREATE TABLE copy AS SELECT * FROM events", "not a CREATE statement"),
    ("INSERT INTO customers SELECT * FROM customers", "not an INSERT statement"),
    ("COMMIT", "not a COMMIT statement"),
    ("PRAGMA query_only = OFF", "not a PRAGMA statement"),
    ("SET default_transaction_read_only = off", "not a SET statement"),
    ("EXPLAIN ANALYZE DELETE FROM customers", "not an EXPLAIN statement"),
    ("WITH gone AS (DELETE FROM customers RETURNING *) SELECT * FROM gone", "holds a DELETE statement inside"),
    ("SELECT * INTO stolen FROM customers", "SELECT ... INTO creates a table"),
    ("SELECT * FROM customers FOR UPDATE", "locking clause (FOR UPDATE)"),
    ("SELECT set_config('default_transaction_read_only', 'off', false)", "calls set_config()"),
    ("SELECT * FROM events /* never closed", "unterminated"),
    ("  ;  ", "it is empty"),
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize(("query", "reason"), REFUSED, ids=[r[1] for r in REFUSED])
def test_a_query_param_must_be_one_read_only_query(backend, query, reason):
    with pytest.raises(ExtractError) as refused:
        read_only_query(query, "the events query (Param events_query)", backend)
    message = str(refused.value)
    assert message.startswith("the events query (Param events_query) must be a single read-only query")
    assert reason in message and "\n" not in message


def test_read_only_queries_run_as_written(warehouse, tmp_path):
    """A trailing ';' or '--' comment, a ':' or '%' in a literal: the query reaches the driver as written."""
    source = TrainingSource(
        events_table=None,
        events_query="SELECT * FROM events WHERE event_type LIKE 'pur%' AND channel <> 'a:b'; -- purchases only",
        labels_table=None,
        labels_query="WITH l AS (SELECT * FROM churn_labels) SELECT * FROM l -- every label",
    )
    manifest = extract(warehouse, str(tmp_path / "out"), source, cutoff=CUTOFF)
    assert set(_events(tmp_path / "out")["event_type"].unique()) == {"purchase"}
    assert manifest.rows["labels"] > 0


def test_sqlite_reads_are_read_only(warehouse):
    """The second guard: a write that got past the parser fails in the session itself, on both paths."""
    with Warehouse(warehouse) as wh:
        with wh.engine.connect() as conn, pytest.raises(sa.exc.OperationalError, match="readonly database"):
            conn.exec_driver_sql("DELETE FROM customers")
        with wh.arrow_statement(10) as statement, pytest.raises(Exception, match="readonly database"):
            statement.set_sql_query("DELETE FROM customers")
            statement.execute_update()
    with sa.create_engine(warehouse).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM customers")).scalar() == 600


# --- the Arrow path writes what the SQLAlchemy path writes -------------------------------------------------

ODD_SQLITE = [
    "CREATE TABLE ev (who TEXT, at TEXT, mixed, empty REAL, late, amount REAL, n INTEGER)",
    # mixed: integers and reals in one batch; empty: only NULLs; late: integers in the first
    # batch, integral reals after it (the Arrow read goes on through SQLAlchemy from there)
    "INSERT INTO ev VALUES ('a', '2026-01-01 10:00:00', 1, NULL, 1, 0.1, 7), ('a', '2026-01-02', 2.5, NULL, 2, 1e300, -1),"
    " ('b', '2026-01-01T08:00:00', 3, NULL, 3.0, NULL, 0), ('c', '2026-01-03 00:00:00.5', -4, NULL, 4.0, 3.25, 9),"
    " ('c', '2026-01-04', NULL, NULL, 5, -0.0, 5)",
    "CREATE TABLE lb (who TEXT, snap TEXT, y INTEGER)",
    "INSERT INTO lb VALUES ('a', '2026-01-05', 1), ('b', '2026-01-05', 0), ('c', '2026-01-05', 1)",
]
ODD_POSTGRES = [
    "CREATE TABLE ev (who TEXT, at TIMESTAMPTZ, small INT2, ratio FLOAT4, price NUMERIC(12, 4), exact NUMERIC, "
    "flag BOOLEAN, day DATE, code VARCHAR(8), pad CHAR(3), nothing DOUBLE PRECISION)",
    "INSERT INTO ev VALUES ('a', '2026-01-01 10:00:00+02', 1, 0.1, 12.5, 0.1234567890123456789, true, '2026-01-01', "
    "'x', 'ab', NULL), ('b', '2026-01-02 00:00:00+00', -3, 1.3, NULL, 1e20, false, NULL, NULL, 'c', NULL), "
    "('b', '2026-01-03 12:00:00-05', NULL, 3.4028235e38, 0.0001, -2, NULL, '2026-01-03', 'yy', NULL, NULL)",
    "CREATE TABLE lb (who TEXT, snap TIMESTAMP, y INTEGER)",
    "INSERT INTO lb VALUES ('a', '2026-01-05', 1), ('b', '2026-01-05', 0)",
    "CREATE TABLE ev_json (who TEXT, at TIMESTAMP, doc JSONB)",
    "INSERT INTO ev_json VALUES ('a', '2026-01-01', '{\"k\": 1}')",
]


def _both_paths(uri, out, source, **options):
    """The manifest of each reader (the Arrow-native default, and SQLAlchemy alone) on the same source."""
    return {reader: extract(uri, str(out / reader), source, reader=reader, **options) for reader in READERS}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_arrow_and_sqlalchemy_paths_write_identical_files(backend, request, tmp_path, caplog):
    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'wh.db'}"
        odd = ODD_SQLITE
    else:
        uri = request.getfixturevalue("postgres_uri")
        odd = ODD_POSTGRES
    synth.generate(synth.SynthConfig(customers=150, events_per_customer=30), uri)
    sqlite_warehouse_statements(uri, *odd)
    with Warehouse(uri) as wh:
        assert wh.arrow_uri  # the default reads through ADBC here
    caplog.set_level("INFO", logger="features.extract.warehouse")
    for cutoff in (None, CUTOFF):
        runs = _both_paths(uri, tmp_path / f"demo-{cutoff}", TrainingSource(entities_table="customers"),
                           cutoff=cutoff, batch_rows=1_000)
        assert runs["auto"].parts > 1 and runs["auto"].rows == runs["sqlalchemy"].rows
        assert runs["auto"].content_hash == runs["sqlalchemy"].content_hash
    assert "; reading" not in caplog.text  # no fallback: the demo's types all go through Arrow
    odd_source = TrainingSource(events_table="ev", labels_table="lb", entity_key="who", timestamp_column="at",
                                snapshot_column="snap", label_column="y")
    runs = _both_paths(uri, tmp_path / "odd", odd_source, batch_rows=2)
    assert runs["auto"].content_hash == runs["sqlalchemy"].content_hash
    assert runs["auto"].rows["events"] == (5 if backend == "sqlite" else 3)
    if backend == "sqlite":  # the column whose storage class changes after the first batch
        assert "changes SQLite storage class after 2 rows; reading on through SQLAlchemy" in caplog.text
        # a value that does not fit is the same error on both paths
        bad = odd_source.model_copy(update={"events_table": None, "events_query":
                                            "SELECT *, CASE WHEN who = 'c' THEN 'x' ELSE 1 END AS bad FROM ev"})
        errors = set()
        for reader in READERS:
            with pytest.raises(ExtractError, match="column 'bad' changes type between rows") as error:
                extract(uri, str(tmp_path / f"bad-{reader}"), bad, batch_rows=2, reader=reader)
            errors.add(str(error.value))
        assert len(errors) == 1
    else:  # a type outside the known list (jsonb) is read through SQLAlchemy, from the start
        runs = _both_paths(uri, tmp_path / "json", odd_source.model_copy(update={"events_table": "ev_json"}))
        assert runs["auto"].content_hash == runs["sqlalchemy"].content_hash
        assert "column 'doc' has type jsonb; reading it through SQLAlchemy" in caplog.text
    scoring = {reader: extract_scoring(uri, str(tmp_path / f"score-{reader}"), CUTOFF, batch_rows=1_000,
                                       reader=reader) for reader in READERS}
    assert scoring["auto"].content_hash == scoring["sqlalchemy"].content_hash


def sqlite_warehouse_statements(uri: str, *statements: str) -> None:
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()

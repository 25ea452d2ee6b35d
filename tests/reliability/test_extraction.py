"""Issue 10, extraction: the warehouse is read only and every bad source is one clear line.

Each case runs the features CLI in-process, as the pod runs it (``features extract ...`` with the warehouse
URI from the environment), against a real SQLite file and a real PostgreSQL server, and asserts the user's
one-line message, the step that fails (the CLI names its command), and that the warehouse is unchanged
(every table's rows, fingerprinted before and after).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from features import synth
from features.cli import main
from support import free_port

# the exact query of issue 10: it closes the parentheses it is pasted into, commits, deletes, reopens
ATTACK = "SELECT * FROM events) AS x; COMMIT; DELETE FROM customers; SELECT * FROM (SELECT 1"
CUTOFF = "2026-08-18"
CUSTOMERS = 120


def seed(uri: str) -> str:
    synth.generate(synth.SynthConfig(customers=CUSTOMERS, events_per_customer=10), uri)
    return uri


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    return seed(f"sqlite:///{tmp_path_factory.mktemp('wh') / 'wh.db'}")


@pytest.fixture(scope="module")
def postgresql_uri(postgres_server) -> str:
    """One seeded database for the module, with a function that deletes: a write no parser can see."""
    admin = sa.create_engine(postgres_server.get_uri("postgres").replace("postgresql://", "postgresql+psycopg://"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql('DROP DATABASE IF EXISTS "wh_reliability_extraction"')
        conn.exec_driver_sql('CREATE DATABASE "wh_reliability_extraction"')
    admin.dispose()
    uri = seed(postgres_server.get_uri("wh_reliability_extraction").replace("postgresql://", "postgresql+psycopg://"))
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE FUNCTION wipe_customers() RETURNS bigint LANGUAGE sql "
                             "AS 'WITH gone AS (DELETE FROM customers RETURNING 1) SELECT count(*) FROM gone'")
    engine.dispose()
    return uri


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse(request) -> str:
    return request.getfixturevalue(f"{request.param}_uri")


def fingerprint(uri: str) -> dict[str, tuple[int, str]]:
    """Every table's row count and a hash of its sorted rows."""
    engine = sa.create_engine(uri)
    try:
        found = {}
        with engine.connect() as conn:
            for table in sorted(sa.inspect(conn).get_table_names()):
                rows = sorted(map(repr, conn.exec_driver_sql(f'SELECT * FROM "{table}"').all()))
                found[table] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
        return found
    finally:
        engine.dispose()


def features(uri: str, tmp_path: Path, monkeypatch, capsys, command: str, *args: str) -> tuple[int, str]:
    """``python -m features <command> <args>`` in-process on ``uri``: (exit code, stderr)."""
    monkeypatch.setenv("WAREHOUSE_URI", uri)
    capsys.readouterr()
    code = main([command, "--out", str(tmp_path / command), *args])
    return code, capsys.readouterr().err.strip()


def refused(uri, tmp_path, monkeypatch, capsys, *args: str, command: str = "extract") -> str:
    """Run a step that must fail: its message, checked to name the step; the warehouse is unchanged."""
    before = fingerprint(uri)
    code, err = features(uri, tmp_path, monkeypatch, capsys, command, *args)
    assert code == 1, err
    assert err.startswith(f"features {command}: ") and "Traceback" not in err, err
    # one line; a gate's report is its headline and one line per failed expectation
    assert "\n" not in err or command.startswith("validate"), err
    assert fingerprint(uri) == before, "the warehouse changed"
    if command == "extract":  # a gate records its failed report; a failed extract publishes nothing
        assert not (tmp_path / command / "manifest.json").exists()
    return err.removeprefix(f"features {command}: ")


# --- 1. the extract cannot write to the warehouse ---------------------------------------------------------------

def test_query_injection_is_refused_before_anything_runs(warehouse, tmp_path, monkeypatch, capsys):
    message = refused(warehouse, tmp_path, monkeypatch, capsys, "--events-query", ATTACK)
    assert message == ("the events query (Param events_query) must be a single read-only query (one SELECT): "
                       "it holds several statements separated by ';'")
    assert fingerprint(warehouse)["customers"][0] == CUSTOMERS


WRITES = {
    "delete": (["--labels-query", "DELETE FROM customers"],
               "the labels query (Param labels_query) must be a single read-only query (one SELECT), "
               "not a DELETE statement"),
    "drop": (["--features-query", "DROP TABLE customers"],
             "the features query (Param features_query) must be a single read-only query (one SELECT), "
             "not a DROP statement"),
    "data-modifying-with": (["--events-query", "WITH gone AS (DELETE FROM customers RETURNING *) SELECT * FROM gone"],
                            "the events query (Param events_query) must be a single read-only query (one SELECT): "
                            "it holds a DELETE statement inside"),
    "select-into": (["--events-query", "SELECT * INTO stolen FROM customers"],
                    "the events query (Param events_query) must be a single read-only query (one SELECT): "
                    "SELECT ... INTO creates a table"),
    "for-update": (["--events-query", "SELECT * FROM events FOR UPDATE"],
                   "the events query (Param events_query) must be a single read-only query (one SELECT): "
                   "its locking clause (FOR UPDATE) takes row locks"),
    "pragma": (["--events-query", "PRAGMA query_only = OFF"],
               "the events query (Param events_query) must be a single read-only query (one SELECT), "
               "not a PRAGMA statement"),
}


@pytest.mark.parametrize("case", WRITES)
def test_write_statements_in_a_query_param_are_refused(case, warehouse, tmp_path, monkeypatch, capsys):
    args, expected = WRITES[case]
    assert refused(warehouse, tmp_path, monkeypatch, capsys, *args) == expected


def test_a_write_the_parser_cannot_see_fails_in_the_read_only_transaction(postgresql_uri, tmp_path, monkeypatch,
                                                                          capsys):
    # one SELECT calling a function that deletes: the parser lets it through, the read-only transaction does not
    query = "SELECT * FROM events WHERE wipe_customers() >= 0"
    message = refused(postgresql_uri, tmp_path, monkeypatch, capsys, "--events-query", query)
    assert message.startswith("the events query (Param events_query): reading from the warehouse failed: cannot ")
    assert message.endswith("in a read-only transaction")
    assert fingerprint(postgresql_uri)["customers"][0] == CUSTOMERS


def test_identifier_injection_in_table_and_column_params(warehouse, tmp_path, monkeypatch, capsys):
    message = refused(warehouse, tmp_path, monkeypatch, capsys, "--events-table", "events; DROP TABLE customers")
    assert message == ("--events-table 'events; DROP TABLE customers' is not a plain SQL identifier "
                       "([A-Za-z_][A-Za-z0-9_.]*)")
    message = refused(warehouse, tmp_path, monkeypatch, capsys, "--entity-key", 'customer_id" FROM x; --')
    assert message.startswith("--entity-key 'customer_id\" FROM x; --' is not a plain SQL identifier")


# --- 2. bad sources: named in the user's terms -------------------------------------------------------------------

def test_a_missing_table_or_column_is_named(warehouse, tmp_path, monkeypatch, capsys):
    assert refused(warehouse, tmp_path, monkeypatch, capsys, "--labels-table", "churn_lables") == (
        "labels table 'churn_lables' not found in the warehouse")
    message = refused(warehouse, tmp_path, monkeypatch, capsys, "--timestamp-column", "ts_typo")
    assert message.startswith("events source has no column 'ts_typo' (from --timestamp-column); columns are: ")


def copy_of_events(uri: str, change: str) -> list[str]:
    """``events`` copied without its constraints as ``user_events``, then ``change`` (an UPDATE of it);
    the extract options that read it."""
    engine = sa.create_engine(uri)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE user_events AS SELECT * FROM events")
        conn.exec_driver_sql(change)
    engine.dispose()
    return ["--events-table", "user_events"]


def test_null_entity_ids_fail_the_raw_gate_naming_the_column(tmp_path, monkeypatch, capsys):
    uri = seed(f"sqlite:///{tmp_path / 'nulls.db'}")
    args = copy_of_events(uri, "UPDATE user_events SET customer_id = NULL WHERE rowid % 50 = 0")
    code, err = features(uri, tmp_path, monkeypatch, capsys, "extract", *args)
    assert code == 0, err
    message = refused(uri, tmp_path, monkeypatch, capsys, "--extract", str(tmp_path / "extract"),
                      command="validate-raw")
    assert "events: expect_column_values_to_not_be_null on " in message
    assert "customer_id" in message  # the user's name for the entity key


# --- 3. driver and storage errors: one line naming the source, never a traceback ----------------------------------

def test_a_failing_query_is_one_line_naming_its_param(warehouse, tmp_path, monkeypatch, capsys):
    message = refused(warehouse, tmp_path, monkeypatch, capsys, "--labels-query", "SELECT * FROM churn_lables")
    assert message.startswith("the labels query (Param labels_query): reading from the warehouse failed: ")
    assert ("no such table: churn_lables" in message) or ('relation "churn_lables" does not exist' in message)


@pytest.mark.parametrize(("backend", "query", "error"), [
    ("postgresql", "SELECT customer_id, event_ts, 1 / (amount - amount) AS ratio FROM events", "division by zero"),
    ("sqlite", "SELECT customer_id, event_ts, abs(-9223372036854775807 - (amount > -1)) AS big FROM events",
     "integer overflow"),
], ids=["postgresql-division-by-zero", "sqlite-integer-overflow"])
def test_an_error_while_streaming_is_one_line_naming_the_query(backend, query, error, request, tmp_path,
                                                                monkeypatch, capsys):
    """The column check (no rows) passes; the error comes from the driver in the middle of the read."""
    uri = request.getfixturevalue(f"{backend}_uri")
    message = refused(uri, tmp_path, monkeypatch, capsys, "--events-query", query)
    assert message == f"the events query (Param events_query): reading from the warehouse failed: {error}"


def test_an_unreachable_warehouse_is_one_line_without_the_password(tmp_path, monkeypatch, capsys):
    uri = f"postgresql+psycopg://pipeline:s3cret-pw@127.0.0.1:{free_port()}/warehouse"
    monkeypatch.setenv("WAREHOUSE_URI", uri)
    code = main(["extract", "--out", str(tmp_path / "extract")])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 1 and "\n" not in err
    assert err.startswith("features extract: events table 'events': reading from the warehouse failed: ")
    assert "Connection refused" in err or "connection failed" in err
    assert "s3cret-pw" not in captured.err + captured.out


@pytest.mark.parametrize(("uri", "expected"), [
    ("not a database url", "the warehouse URI (env WAREHOUSE_URI) is not a database URL"),
    ("mysql+nosuchdriver://u@h/db", "the warehouse URI names a 'mysql+nosuchdriver' database, which this image "
                                    "cannot reach"),
], ids=["not-a-url", "no-driver"])
def test_a_bad_warehouse_uri_is_one_line(uri, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAREHOUSE_URI", uri)
    assert main(["extract", "--out", str(tmp_path / "extract")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"features extract: {expected}") and "\n" not in err


def test_a_storage_error_is_one_line_naming_the_output(sqlite_uri, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    monkeypatch.setenv("WAREHOUSE_URI", sqlite_uri)
    before = fingerprint(sqlite_uri)
    assert main(["extract", "--out", str(tmp_path / "a-file" / "extract")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("features extract: could not write the ")  # the first write names what it writes
    assert f" to {tmp_path / 'a-file' / 'extract'}" in err and "Not a directory" in err and "\n" not in err
    assert fingerprint(sqlite_uri) == before


# --- 4. timestamps SQL cannot compare: never dropped silently ----------------------------------------------------

def test_unparseable_timestamps_under_a_cutoff_fail_naming_the_column(tmp_path, monkeypatch, capsys):
    """On SQLite the cutoff compares text: 'garbage' and '31/12/2025' sort after '2026-…' and were left out
    without a word; now they reach the parser, which names the column, counts them and shows one."""
    uri = seed(f"sqlite:///{tmp_path / 'bad-ts.db'}")
    args = copy_of_events(uri, "UPDATE user_events SET event_ts = CASE rowid WHEN 7 THEN '31/12/2025' "
                               "ELSE 'garbage' END WHERE rowid IN (3, 5, 7)")
    message = refused(uri, tmp_path, monkeypatch, capsys, *args, "--cutoff", CUTOFF)
    assert message.startswith("column 'event_ts' has values that are not timestamps (3 in a batch of ")
    assert "e.g. '31/12/2025'" in message or "e.g. 'garbage'" in message


def test_missing_timestamps_under_a_cutoff_reach_the_raw_gate(tmp_path, monkeypatch, capsys):
    """NULL is not before the cutoff in SQL either: such events were dropped with a cutoff and reported by
    the gate without one. They are kept, so the gate reports them either way."""
    uri = seed(f"sqlite:///{tmp_path / 'null-ts.db'}")
    args = copy_of_events(uri, "UPDATE user_events SET event_ts = NULL WHERE rowid % 40 = 0")
    code, err = features(uri, tmp_path, monkeypatch, capsys, "extract", *args, "--cutoff", CUTOFF)
    assert code == 0, err
    message = refused(uri, tmp_path, monkeypatch, capsys, "--extract", str(tmp_path / "extract"),
                      command="validate-raw")
    assert "events: expect_column_values_to_not_be_null on " in message and "event_ts" in message

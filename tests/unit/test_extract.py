"""Warehouse → canonical parquet: schema, cutoff, query sources, clear errors, idempotent reruns."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest
import sqlalchemy as sa
from features import io, synth
from features.extract import ExtractError, ExtractSource, extract, mask_uri

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
        warehouse, out, ExtractSource(entities_table="customers"), cutoff=CUTOFF, batch_rows=5_000
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
    assert labels.schema == pl.Schema(
        {"entity_id": pl.Utf8, "snapshot_ts": pl.Datetime("us"), "label": pl.Int8}
    )
    assert entities.columns == ["entity_id", "signup_ts", "plan", "region"]
    assert entities.schema["signup_ts"] == pl.Datetime("us")
    assert events["event_ts"].max() < CUTOFF
    assert labels["snapshot_ts"].max() == CUTOFF  # snapshots up to and including the cutoff
    with sa.create_engine(warehouse).connect() as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM events WHERE event_ts < '2026-08-18'")).scalar()
    assert manifest["rows"] == {"events": before, "labels": labels.height, "entities": 600}
    assert events.height == before
    assert manifest["parts"] == len(list((tmp_path / "extract" / "events").glob("part-*.parquet"))) > 1
    assert events.sort("entity_id", "event_ts").equals(events)  # deterministic order
    assert (
        manifest["snapshots"] == sorted(manifest["snapshots"])
        and manifest["snapshots"][-1] == CUTOFF.isoformat()
    )
    assert manifest["cutoff"] == CUTOFF.isoformat()
    assert "uri" not in str(manifest["source"]).lower() and "sqlite" not in str(manifest)
    assert io.read_manifest(out)["content_hash"] == manifest["content_hash"]


def test_rerun_is_idempotent_and_leaves_no_stale_parts(warehouse, tmp_path):
    out = str(tmp_path / "extract")
    first = extract(warehouse, out, cutoff=CUTOFF, batch_rows=3_000)
    again = extract(warehouse, out, cutoff=CUTOFF, batch_rows=3_000)
    assert first["content_hash"] == again["content_hash"]
    fewer = extract(warehouse, out, cutoff=CUTOFF, batch_rows=50_000)
    parts = sorted(p.name for p in (tmp_path / "extract" / "events").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(fewer["parts"])]
    assert fewer["parts"] < first["parts"]
    assert _events(out).height == first["rows"]["events"]
    assert not [p for p in (tmp_path / "extract").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_query_source_with_custom_column_names(warehouse, tmp_path):
    out = str(tmp_path / "extract")
    source = ExtractSource(
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
    assert manifest["source"]["events_query"].startswith("SELECT customer_id AS cust")


def test_missing_column_or_table_names_it(warehouse, tmp_path):
    with pytest.raises(
        ExtractError, match=r"events source has no column 'ts_typo' \(from --timestamp-column\)"
    ):
        extract(warehouse, str(tmp_path / "a"), ExtractSource(timestamp_column="ts_typo"))
    with pytest.raises(ExtractError, match="labels table 'nope' not found"):
        extract(warehouse, str(tmp_path / "b"), ExtractSource(labels_table="nope"))
    with pytest.raises(ExtractError, match="not a plain SQL identifier"):
        ExtractSource(entity_key="id; DROP TABLE events")
    with pytest.raises(ExtractError, match="exactly one of --events-table or --events-query"):
        ExtractSource(events_query="SELECT 1")
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_text_timestamps_in_many_layouts_parse(tmp_path):
    uri = f"sqlite:///{tmp_path / 'odd.db'}"
    with sa.create_engine(uri).begin() as conn:
        conn.execute(sa.text("CREATE TABLE ev (id INTEGER, ts TEXT, v REAL)"))
        conn.execute(sa.text("CREATE TABLE lb (id INTEGER, snap TEXT, y INTEGER)"))
        conn.execute(
            sa.text(
                "INSERT INTO ev VALUES (2, '2026-01-02T03:04:05', 1.5), (1, '2026-01-01 10:00:00.250000', 2), "
                "(1, '2026-01-03', 0), (3, '2026-01-05 00:00:00', 1)"
            )
        )
        conn.execute(sa.text("INSERT INTO lb VALUES (1, '2026-01-04', 1), (2, '2026-01-05 00:00:00', 0)"))
    source = ExtractSource(
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

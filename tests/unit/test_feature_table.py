"""Ready-made feature tables: extract (training, scoring, realised labels) on SQLite and PostgreSQL, typed
columns under the user's names, and errors that name the user's table and columns."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest
import sqlalchemy as sa
from features.cli import main
from features.errors import ExtractError
from features.extract.labels import extract_labels
from features.extract.scoring import extract_scoring
from features.extract.training import extract
from mlcontract.errors import SourceError
from mlcontract.manifests import ExtractManifest, LabelsManifest, ScoringExtractManifest
from mlcontract.source import LabelSource, ScoringSource, TrainingSource

JAN, FEB, MAR = datetime(2026, 1, 31), datetime(2026, 2, 28), datetime(2026, 3, 31)
# (customer, cutoff, spend, visits, is_vip, segment, joined, outcome, y_amount)
ROWS = [
    ("c1", JAN, 10.5, 3, True, "gold", datetime(2025, 1, 1), 1, 0.7),
    ("c2", JAN, 0.0, 0, False, "basic", datetime(2025, 6, 1), 0, 12.0),
    ("c1", FEB, 11.0, 4, True, "gold", datetime(2025, 1, 1), 0, 1.9),
    ("c2", FEB, 2.5, 1, False, None, datetime(2025, 6, 1), 1, 0.0),
    ("c3", MAR, 7.0, 2, False, "basic", datetime(2026, 3, 1), 1, 3.5),
    ("c1", MAR, 1.0, 1, True, "gold", datetime(2025, 1, 1), 0, 2.0),
]
COLUMNS = ["entity_id", "snapshot_ts", "label", "spend", "visits", "is_vip", "segment", "joined", "y_amount"]


def _create(uri: str) -> str:
    engine = sa.create_engine(uri)
    sqlite = engine.dialect.name == "sqlite"
    ts = "TEXT" if sqlite else "TIMESTAMP"
    with engine.begin() as conn:
        for name in ("training_table", "flat_table"):
            conn.execute(sa.text(
                f"CREATE TABLE {name} (cust TEXT, cutoff_ts {ts}, spend DOUBLE PRECISION, visits INTEGER, "
                f"is_vip BOOLEAN, segment TEXT, joined {ts}, outcome INTEGER, y_amount DOUBLE PRECISION)"
            ))
        insert = ("INSERT INTO {} VALUES (:cust, :cutoff_ts, :spend, :visits, :is_vip, :segment, :joined, "
                  ":outcome, :y_amount)")
        names = ["cust", "cutoff_ts", "spend", "visits", "is_vip", "segment", "joined", "outcome", "y_amount"]

        def rows(selected):
            return [
                {k: (v.isoformat(sep=" ") if sqlite and isinstance(v, datetime) else v) for k, v in zip(names, r)}
                for r in selected
            ]

        conn.execute(sa.text(insert.format("training_table")), rows(ROWS))
        conn.execute(sa.text(insert.format("flat_table")), rows([r for r in ROWS if r[1] == MAR]))
    engine.dispose()
    return uri


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse(request, tmp_path) -> str:
    if request.param == "sqlite":
        return _create(f"sqlite:///{tmp_path / 'wh.db'}")
    return _create(request.getfixturevalue("postgres_uri"))


def _source(**overrides) -> TrainingSource:
    fields = {"features_table": "training_table", "entity_key": "cust", "snapshot_column": "cutoff_ts",
              "label_column": "outcome"}
    return TrainingSource(**{**fields, **overrides})


def test_training_extract_keeps_every_column_typed_under_the_users_names(warehouse, tmp_path):
    out = tmp_path / "extract"
    manifest = extract(warehouse, str(out), _source(), cutoff=FEB)
    labels = pl.read_parquet(out / "labels.parquet")
    assert labels.columns == COLUMNS
    assert labels.schema["label"] == pl.Int64 and labels.schema["y_amount"] == pl.Float64
    assert labels.schema["spend"] == pl.Float64 and labels.schema["segment"] == pl.Utf8
    assert labels.schema["joined"] == pl.Datetime("us") and labels.schema["snapshot_ts"] == pl.Datetime("us")
    assert labels.schema["visits"].is_integer() and labels.schema["is_vip"] in (pl.Boolean, pl.Int64)
    # up to the cutoff, in (entity, snapshot) order
    assert labels.select("entity_id", "snapshot_ts", "label").rows() == [
        ("c1", JAN, 1), ("c1", FEB, 0), ("c2", JAN, 0), ("c2", FEB, 1)
    ]
    assert labels["y_amount"].to_list() == [0.7, 1.9, 12.0, 0.0]  # never cast to a 0/1 label
    assert manifest.kind == "feature_table" and manifest.parts == 0
    assert manifest.columns == {"entity_id": "cust", "snapshot_ts": "cutoff_ts", "label": "outcome"}
    assert manifest.snapshots == [JAN.isoformat(), FEB.isoformat()]
    assert manifest.outputs == {"labels": str(out / "labels.parquet")} and manifest.rows == {"labels": 4}
    assert not (out / "events").exists() and ExtractManifest.read(str(out)) == manifest


def test_without_a_snapshot_column_every_row_is_at_the_cutoff(warehouse, tmp_path):
    source = _source(features_table="flat_table", snapshot_column=None)
    manifest = extract(warehouse, str(tmp_path / "out"), source, cutoff=date(2026, 4, 1))
    labels = pl.read_parquet(tmp_path / "out" / "labels.parquet")
    # the table's own cutoff_ts column is a feature column like any other
    assert labels.columns == ["entity_id", "snapshot_ts", "label", "cutoff_ts", *COLUMNS[3:]]
    assert labels["snapshot_ts"].unique().to_list() == [datetime(2026, 4, 1)] and labels.height == 2
    assert manifest.columns == {"entity_id": "cust", "label": "outcome"}


def test_duplicated_keys_name_the_users_table_and_columns(warehouse, tmp_path):
    with pytest.raises(ExtractError) as failed:
        extract(warehouse, str(tmp_path / "a"), _source(snapshot_column=None))
    assert str(failed.value).startswith("feature table 'training_table' has 2 duplicated (cust) key(s), e.g. cust=c1")
    assert "one row per cust" in str(failed.value)
    engine = sa.create_engine(warehouse)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_table (cust, cutoff_ts, outcome) "
                             "SELECT cust, cutoff_ts, outcome FROM training_table WHERE cust = 'c3'"))
    engine.dispose()
    with pytest.raises(ExtractError, match=r"duplicated \(cust, cutoff_ts\) key\(s\), e\.g\. cust=c3, cutoff_ts=2026-03-31"):
        extract(warehouse, str(tmp_path / "b"), _source())
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_bad_feature_table_sources_are_named(warehouse, tmp_path):
    with pytest.raises(SourceError, match="either a feature table .* or events, not both: --events-table"):
        _source(events_table="events")
    with pytest.raises(ExtractError, match=r"features source has no column 'churned' \(from --label-column\)"):
        extract(warehouse, str(tmp_path / "a"), _source(label_column="churned"))
    with pytest.raises(ExtractError, match="features table 'nope' not found in the warehouse"):
        extract(warehouse, str(tmp_path / "b"), _source(features_table="nope"))
    query = "SELECT cust, cutoff_ts, outcome, spend AS label FROM training_table"
    with pytest.raises(ExtractError, match="the --features-query result has a column named 'label' that is not its "
                                           "--label-column"):
        extract(warehouse, str(tmp_path / "c"), _source(features_table=None, features_query=query))


def test_scoring_spine_holds_the_rows_of_the_score_date(warehouse, tmp_path):
    source = ScoringSource(features_table="training_table", entity_key="cust", snapshot_column="cutoff_ts",
                           label_column="outcome")
    manifest = extract_scoring(warehouse, str(tmp_path / "out"), date(2026, 2, 28), source)
    spine = pl.read_parquet(tmp_path / "out" / "spine.parquet")
    assert spine.columns == ["entity_id", "snapshot_ts", *COLUMNS[3:]]  # no label
    assert spine.rows() == [
        ("c1", FEB, 11.0, 4, *spine.row(0)[4:5], "gold", datetime(2025, 1, 1), 1.9),
        ("c2", FEB, 2.5, 1, *spine.row(1)[4:5], None, datetime(2025, 6, 1), 0.0),
    ]
    assert manifest.kind == "feature_table" and manifest.outputs == {"spine": str(tmp_path / "out" / "spine.parquet")}
    assert manifest.rows == {"spine": 2} and ScoringExtractManifest.read(str(tmp_path / "out")) == manifest
    # without a snapshot column: every row, at the score date
    flat = ScoringSource(features_table="flat_table", entity_key="cust")
    spine = pl.read_parquet(extract_scoring(warehouse, str(tmp_path / "flat"), date(2026, 5, 1), flat).output("spine"))
    assert spine["entity_id"].to_list() == ["c1", "c3"] and "outcome" in spine.columns  # not named: a column
    assert spine["snapshot_ts"].unique().to_list() == [datetime(2026, 5, 1)]


def test_realised_labels_from_a_feature_table(warehouse, tmp_path):
    source = LabelSource(labels_table="training_table", entity_key="cust", snapshot_column="cutoff_ts",
                         label_column="outcome")
    labels = pl.read_parquet(extract_labels(warehouse, str(tmp_path / "a"), MAR.date(), source).output("labels"))
    assert labels.rows() == [("c1", 0), ("c3", 1)]
    flat = LabelSource(labels_table="flat_table", entity_key="cust", snapshot_column=None, label_column="y_amount")
    manifest = extract_labels(warehouse, str(tmp_path / "b"), MAR.date(), flat, task="regression")
    labels = pl.read_parquet(manifest.output("labels"))
    assert labels.schema == pl.Schema({"entity_id": pl.Utf8, "label": pl.Float64})
    assert labels.rows() == [("c1", 2.0), ("c3", 3.5)] and manifest.task == "regression"
    assert manifest.columns == {"entity_id": "cust", "label": "y_amount"}
    with pytest.raises(ExtractError, match=r"label column 'y_amount' must hold 0/1 \(or booleans\) for task=binary, "
                                           r"found 2 other value\(s\) on 2026-03-31, e\.g\. 2\.0"):
        extract_labels(warehouse, str(tmp_path / "c"), MAR.date(), flat)
    classes = LabelSource(labels_table="flat_table", entity_key="cust", snapshot_column=None, label_column="segment")
    labels = pl.read_parquet(extract_labels(warehouse, str(tmp_path / "d"), MAR.date(), classes, task="multiclass")
                             .output("labels"))
    assert labels.rows() == [("c1", "gold"), ("c3", "basic")]
    assert LabelsManifest.read(str(tmp_path / "d")).task == "multiclass"


def test_the_cli_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAREHOUSE_URI", _create(f"sqlite:///{tmp_path / 'wh.db'}"))
    args = ["--features-table", "training_table", "--entity-key", "cust", "--label-column", "outcome"]
    assert main(["extract", *args, "--snapshot-column", "cutoff_ts", "--out", str(tmp_path / "x")]) == 0
    assert ExtractManifest.read(str(tmp_path / "x")).rows == {"labels": 6}
    assert main(["extract", *args, "--out", str(tmp_path / "y")]) == 1
    assert "feature table 'training_table' has 2 duplicated (cust) key(s)" in capsys.readouterr().err
    assert main(["extract", *args, "--events-table", "events", "--out", str(tmp_path / "z")]) == 1
    assert "not both: --events-table" in capsys.readouterr().err
    # a step's argument list has a fixed length: the DAG passes the unused source as '' (none)
    unused = ["--events-table", "", "--labels-table", "", "--entities-table", ""]
    assert main(["extract", *args, *unused, "--snapshot-column", "cutoff_ts", "--out", str(tmp_path / "dag")]) == 0
    assert ExtractManifest.read(str(tmp_path / "dag")).kind == "feature_table"
    scoring = ["extract-scoring", "--as-of", "2026-03-31", "--features-table", "training_table", "--entity-key", "cust",
               "--snapshot-column", "cutoff_ts", "--label-column", "outcome", "--out", str(tmp_path / "s")]
    assert main(scoring) == 0
    assert ScoringExtractManifest.read(str(tmp_path / "s")).rows == {"spine": 2}
    labels = ["extract-labels", "--score-date", "2026-03-31", "--features-table", "flat_table", "--entity-key", "cust",
              "--snapshot-column", "", "--label-column", "segment", "--task", "multiclass", "--out", str(tmp_path / "l")]
    assert main(labels) == 0
    assert LabelsManifest.read(str(tmp_path / "l")).rows == {"labels": 2}


# --- the raw gate on a feature table ----------------------------------------------------------------------


def test_the_raw_gate_checks_a_feature_table_in_the_users_names(tmp_path):
    from features.errors import GateFailed
    from features.gates.raw import validate_raw
    from mlcontract.manifests import GateManifest

    uri = _create(f"sqlite:///{tmp_path / 'wh.db'}")
    extracted = tmp_path / "extract"
    extract(uri, str(extracted), _source())
    manifest = validate_raw(str(extracted), str(tmp_path / "gate"), split="time")
    assert manifest.success is True and manifest.rows == {"labels": 6}  # no events to check
    # a second row for a key, and a table with nothing but key, snapshot and label
    labels = pl.read_parquet(extracted / "labels.parquet")
    pl.concat([labels, labels.head(1)]).write_parquet(extracted / "labels.parquet")
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(extracted), str(tmp_path / "dup"))
    assert ("labels: expect_compound_columns_to_be_unique on ['cust', 'cutoff_ts']: one row per cust (entity key) "
            "and cutoff_ts (snapshot); these are on more than one: 2 unexpected value(s)") in str(failed.value)
    labels.select("entity_id", "snapshot_ts", "label").write_parquet(extracted / "labels.parquet")
    with pytest.raises(GateFailed) as failed:
        validate_raw(str(extracted), str(tmp_path / "bare"))
    assert ("labels: expect_table_column_count_to_be_between on table: the feature table has no feature column "
            "besides cust, cutoff_ts, outcome") in str(failed.value)
    assert GateManifest.read(str(tmp_path / "bare")).failures[0].observed == 3


def test_the_raw_gate_cli_takes_the_task_and_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WAREHOUSE_URI", _create(f"sqlite:///{tmp_path / 'wh.db'}"))
    args = ["--features-table", "flat_table", "--entity-key", "cust", "--label-column", "y_amount"]
    assert main(["extract", *args, "--cutoff", "2026-04-01", "--out", str(tmp_path / "x")]) == 0
    gate = ["validate-raw", "--extract", str(tmp_path / "x")]
    assert main([*gate, "--task", "regression", "--split", "entity", "--out", str(tmp_path / "ok")]) == 0
    assert main([*gate, "--task", "regression", "--split", "time", "--out", str(tmp_path / "time")]) == 1
    err = capsys.readouterr().err
    assert ("column snapshot_ts (snapshot: the feature table has no --snapshot-column, so one date for all rows) has "
            "1 distinct value(s); a time split needs >= 3 (use split=entity or auto)") in err
    assert main([*gate, "--out", str(tmp_path / "binary")]) == 1
    assert "column y_amount (label) must hold 0/1 or booleans for task=binary" in capsys.readouterr().err

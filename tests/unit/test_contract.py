"""The contract package: storage (atomic writes, staged directories), layout, typed manifests, the source
model, URI masking, the step environment and the CLI runner."""

from __future__ import annotations

import os

import polars as pl
import pytest
from mlcontract import layout, storage
from mlcontract.cli import Commands, run
from mlcontract.env import StepEnvironment
from mlcontract.errors import ManifestError, MissingManifest, SourceError, StepInputError
from mlcontract.manifests import ExtractManifest, GateFailure, GateManifest
from mlcontract.source import LabelSource, ScoringSource, TrainingSource, check_identifier, mask_uri


def test_write_json_is_atomic_and_leaves_no_temporary_files(tmp_path):
    uri = f"file://{tmp_path}/a/b/doc.json"
    storage.write_json(uri, {"x": 1})
    storage.write_json(uri, {"x": 2})
    assert storage.read_json(uri) == {"x": 2}
    assert os.listdir(tmp_path / "a" / "b") == ["doc.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    uri = str(tmp_path / "doc.bin")
    storage.write_bytes(uri, b"old")
    with pytest.raises(RuntimeError), storage.atomic_open(uri) as handle:
        handle.write(b"half")
        raise RuntimeError("killed mid-write")
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["doc.bin"]


def test_parquet_round_trip_stream_and_scan(tmp_path):
    frames = [pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"a": [3]})]
    uri = f"file://{tmp_path}/t.parquet"
    assert storage.write_parquet_stream(uri, iter(frames)) == 3
    assert storage.read_parquet(uri)["a"].to_list() == [1, 2, 3]
    storage.write_parquet(f"file://{tmp_path}/u.parquet", pl.DataFrame({"a": [4]}))
    both = storage.scan_parquet([uri, f"file://{tmp_path}/u.parquet"]).collect()
    assert both["a"].to_list() == [1, 2, 3, 4]
    storage.copy_file(uri, f"file://{tmp_path}/copy/t.parquet")
    assert storage.hash_files([uri]) == storage.hash_files([f"file://{tmp_path}/copy/t.parquet"])


def test_staged_directory_appears_at_once_and_replaces_the_old_one(tmp_path):
    final = f"file://{tmp_path}/events"
    with storage.StagedDirectory(final) as staged:
        storage.write_bytes(storage.join_uri(staged.uri, "part-00000.parquet"), b"1")
        assert not storage.exists(final)  # nothing visible before the commit
    assert [p.rsplit("/", 1)[-1] for p in storage.list_files(final, "part-")] == ["part-00000.parquet"]
    with storage.StagedDirectory(final) as staged:
        storage.write_bytes(storage.join_uri(staged.uri, "part-00001.parquet"), b"2")
    assert [p.rsplit("/", 1)[-1] for p in storage.list_files(final)] == ["part-00001.parquet"]
    assert sorted(os.listdir(tmp_path)) == ["events"]


def test_staged_directory_aborts_on_error_and_keeps_a_complete_one(tmp_path):
    final = f"file://{tmp_path}/snap"
    with pytest.raises(RuntimeError), storage.StagedDirectory(final) as staged:
        storage.write_bytes(storage.join_uri(staged.uri, "x"), b"1")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with storage.StagedDirectory(final) as staged:
        storage.write_json(storage.join_uri(staged.uri, "manifest.json"), {"first": True})
    staged = storage.StagedDirectory(final, keep_complete=True)
    storage.write_json(storage.join_uri(staged.uri, "manifest.json"), {"first": False})
    assert staged.commit() is False
    assert storage.read_json(f"{final}/manifest.json") == {"first": True}
    assert os.listdir(tmp_path) == ["snap"]


def test_layout_paths():
    root = "s3://bucket/artifacts/"
    assert layout.step_dir(root, "d", "r", "t") == "s3://bucket/artifacts/runs/d/r/t"
    assert layout.step_dir(root, "d", "r", "t", map_index=3) == "s3://bucket/artifacts/runs/d/r/t/3"
    assert layout.predictions_dir(root, "m", "2026-01-02") == "s3://bucket/artifacts/predictions/m/2026-01-02"
    assert layout.deployment_uri(root, "m") == "s3://bucket/artifacts/deployments/m/champion.json"
    assert layout.audit_uri(root, "m", "d", "manual__a/b", "promote").endswith("alias-moves/d/manual__a_b/promote.json")
    # Jinja templates pass through untouched (the DAGs build templated step dirs with the same function)
    assert layout.step_dir(root, "{{ dag.dag_id }}", "{{ run_id }}", "x").endswith("runs/{{ dag.dag_id }}/{{ run_id }}/x")


def test_manifest_round_trip_and_clear_errors(tmp_path):
    directory = f"file://{tmp_path}/extract"
    with pytest.raises(MissingManifest, match="has not finished"):
        ExtractManifest.read(directory)
    manifest = ExtractManifest(
        outputs={"events": "e", "labels": "l"}, rows={"events": 3}, parts=1, content_hash="h",
        source={"events_table": "events"}, snapshots=["2026-01-01T00:00:00"],
    )
    manifest.write(directory)
    assert ExtractManifest.read(directory) == manifest
    assert manifest.output("labels") == "l"
    with pytest.raises(ManifestError, match="no 'entities' output"):
        manifest.output("entities")
    with pytest.raises(ManifestError, match="is not a valid GateManifest"):
        GateManifest.read(directory)  # another step's manifest is not silently accepted
    with pytest.raises(ManifestError, match="parts"):
        ExtractManifest.parse({**manifest.model_dump(), "parts": "many"})


def test_gate_manifest_keeps_failures_typed():
    failure = GateFailure(dataset="events", expectation="expect_column_values_to_not_be_null", column="amount",
                          observed={"unexpected_count": 3}, details="3 unexpected value(s)")
    gate = GateManifest(step="validate-raw", results_uri="r", success=False, failures=[failure],
                        rows={"events": 10}, expectations=4, input="x")
    assert GateManifest.parse(gate.model_dump(mode="json")).failures[0].column == "amount"


def test_sources_check_identifiers_and_relations():
    assert TrainingSource().relation("events") == ("events", None)
    query = TrainingSource(events_table=None, events_query="select * from e")
    assert query.relation("events") == (None, "select * from e")
    with pytest.raises(SourceError, match="exactly one of --events-table or --events-query"):
        TrainingSource(events_query="select 1")
    with pytest.raises(SourceError, match="--entity-key 'id; drop table x'"):
        TrainingSource(entity_key="id; drop table x")
    with pytest.raises(SourceError, match="--labels-table"):
        LabelSource(labels_table="a b")
    assert ScoringSource(signup_column=None).describe()["entities_table"] == "customers"
    assert check_identifier("schema.table", "--events-table") == "schema.table"


def test_mask_uri_hides_passwords_and_query_secrets_only():
    assert mask_uri("postgresql+psycopg://ml:s3cret@db:5432/wh") == "postgresql+psycopg://ml:***@db:5432/wh"
    assert mask_uri("https://hooks.example/x?token=abc&sig=def&team=ml") == (
        "https://hooks.example/x?token=***&sig=***&team=ml"
    )
    assert mask_uri("sqlite:////tmp/warehouse.db") == "sqlite:////tmp/warehouse.db"
    assert mask_uri("s3://bucket/path") == "s3://bucket/path"


def test_step_environment(monkeypatch):
    monkeypatch.setenv("STEP_OUTPUT_URI", "file:///tmp/out")
    monkeypatch.setenv("WAREHOUSE_URI", "postgresql://u:pw@h/db")
    monkeypatch.setenv("PIPELINE_DAG_ID", "d")
    monkeypatch.setenv("PIPELINE_RUN_ID", "r")
    env = StepEnvironment()
    assert env.output(None) == "file:///tmp/out" and env.output("x") == "x"
    assert env.warehouse() == "postgresql://u:pw@h/db"
    assert "pw" not in repr(env)  # the secret never prints
    assert env.pipeline_run_key == "d/r"
    monkeypatch.delenv("STEP_OUTPUT_URI")
    monkeypatch.delenv("WAREHOUSE_URI")
    with pytest.raises(StepInputError, match="STEP_OUTPUT_URI"):
        StepEnvironment().output(None)
    with pytest.raises(StepInputError, match="WAREHOUSE_URI"):
        StepEnvironment().warehouse()


def test_cli_turns_pipeline_errors_into_one_line_and_exit_1(capsys, tmp_path):
    commands = Commands("demo", "a demo CLI")

    def fail(args):
        raise SourceError("events table 'evnts' not found in the warehouse")

    def succeed(args):
        return None

    commands.add("fail", fail, "always fails")
    commands.add("ok", succeed, "always succeeds")
    assert run(commands, ["fail", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "demo fail: events table 'evnts' not found in the warehouse"
    assert run(commands, ["ok"]) == 0

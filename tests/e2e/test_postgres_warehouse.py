"""The PostgreSQL warehouse path against a real PostgreSQL server: the same step commands the pods run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
SEED = ("--customers", "800", "--events-per-customer", "20", "--seed", "11")


def features_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "features", *args], env=env, capture_output=True, text=True)


@pytest.fixture
def warehouses(postgres_uri, tmp_path):
    """The same generated warehouse in PostgreSQL and in SQLite."""
    sqlite_uri = f"sqlite:///{tmp_path / 'warehouse.db'}"
    for uri in (postgres_uri, sqlite_uri):
        result = features_cli({**os.environ, "WAREHOUSE_URI": uri}, "seed", *SEED)
        assert result.returncode == 0, result.stderr
    return {"postgresql": postgres_uri, "sqlite": sqlite_uri}


def test_postgres_extract_gate_and_features_match_sqlite(warehouses, tmp_path):
    outputs = {}
    for name, uri in warehouses.items():
        env = {**os.environ, "WAREHOUSE_URI": uri}
        extract_dir, gate_dir, build_dir = (f"file://{tmp_path}/{name}/{step}" for step in ("extract", "gate", "build"))
        for args in (("extract", "--out", extract_dir),
                     ("validate-raw", "--extract", extract_dir, "--out", gate_dir),
                     ("build", "--extract", extract_dir, "--snapshot-root", f"file://{tmp_path}/{name}/features",
                      "--out", build_dir)):
            result = features_cli(env, *args)
            assert result.returncode == 0, f"{name} {args[0]}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
            assert uri.split("@")[-1] not in result.stdout + result.stderr or "sqlite" in uri
        manifest = json.loads((tmp_path / name / "build" / "manifest.json").read_text())
        outputs[name] = (
            json.loads((tmp_path / name / "extract" / "manifest.json").read_text()),
            pl.read_parquet(manifest["snapshot_uri"].removeprefix("file://") + "/train.parquet"),
        )
    pg_extract, pg_train = outputs["postgresql"]
    lite_extract, lite_train = outputs["sqlite"]
    assert pg_extract["rows"] == lite_extract["rows"] and pg_extract["rows"]["events"] > 5_000
    assert pg_train.shape == lite_train.shape
    assert pg_train.equals(lite_train), "the same warehouse must give the same features on either database"


def test_postgres_gate_names_the_failing_column(warehouses, tmp_path):
    import sqlalchemy as sa

    uri = warehouses["postgresql"]
    with sa.create_engine(uri).begin() as connection:
        connection.execute(sa.text("UPDATE churn_labels SET churned = 3 WHERE customer_id IN "
                                   "(SELECT customer_id FROM churn_labels LIMIT 5)"))
    env = {**os.environ, "WAREHOUSE_URI": uri}
    assert features_cli(env, "extract", "--out", f"file://{tmp_path}/x").returncode == 0
    gate = features_cli(env, "validate-raw", "--extract", f"file://{tmp_path}/x", "--out", f"file://{tmp_path}/g")
    assert gate.returncode == 1
    assert "label" in gate.stderr and "expect_column_values_to_be_in_set" in gate.stderr

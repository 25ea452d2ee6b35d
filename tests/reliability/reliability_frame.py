"""What every reliability case asserts on: the registry and the warehouse as they were (see conftest.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class Platform:
    """One module's registry and artifact store (``settings()``: what the Airflow-side tasks read)."""

    root: Path
    tracking_uri: str
    artifact_root: str

    def settings(self, model_name: str):
        from mlplatform.settings import Settings

        return Settings(MLFLOW_TRACKING_URI=self.tracking_uri, ARTIFACT_ROOT=self.artifact_root,
                        REGISTERED_MODEL_NAME=model_name, MLPLATFORM_HOME=str(self.root))

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def registry_state(platform: Platform, model_name: str) -> dict[str, Any]:
    """Versions and aliases of a registered model (empty when it is not registered)."""
    client = platform.client()
    versions = client.search_model_versions(f"name = '{model_name}'")
    if not versions:
        return {"versions": [], "aliases": {}}
    model = client.get_registered_model(model_name)
    return {"versions": sorted(str(v.version) for v in versions),
            "aliases": {alias: str(version) for alias, version in (model.aliases or {}).items()}}


def warehouse_state(uri: str) -> dict[str, str]:
    """Each table's row count and a digest of its rows, in a stable order."""
    engine = sa.create_engine(uri)
    state = {}
    try:
        with engine.connect() as connection:
            for table in sorted(sa.inspect(connection).get_table_names()):
                rows = connection.execute(sa.text(f'SELECT * FROM "{table}"')).fetchall()
                digest = hashlib.sha256(json.dumps(sorted(map(repr, rows))).encode()).hexdigest()
                state[table] = f"{len(rows)}:{digest[:16]}"
    finally:
        engine.dispose()
    return state

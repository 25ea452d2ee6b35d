"""MLflow: the experiment, lineage tags, and the registry operations the trainer needs.

The tracking server comes from ``MLFLOW_TRACKING_URI`` (read by MLflow itself). That URI may carry a
password, so it is never logged, tagged or written to a manifest; neither is any other env value
except the named, non-secret lineage variables below.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import mlflow
from features import io
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "customer-churn"
CHALLENGER = "challenger"
CHAMPION = "champion"
RUN_KEY_TAG = "pipeline_run_key"
MAX_TAG_LENGTH = 5000  # below MLflow's limit on tag values


@dataclass(frozen=True)
class Lineage:
    """Where a model came from, from the pod's env (set by the DAG's pod factory)."""

    dag_id: str | None
    run_id: str | None
    task_id: str | None
    code_version: str
    image_ref: str | None

    @classmethod
    def from_env(cls) -> Lineage:
        env = os.environ
        return cls(
            dag_id=env.get("PIPELINE_DAG_ID") or None,
            run_id=env.get("PIPELINE_RUN_ID") or None,
            task_id=env.get("PIPELINE_TASK_ID") or None,
            code_version=env.get("CODE_VERSION") or _package_version(),
            image_ref=env.get("IMAGE_REF") or None,
        )

    @property
    def pipeline_run_key(self) -> str | None:
        """Identifies one pipeline run: a rerun of its train task finds the version it registered."""
        if self.dag_id and self.run_id:
            return f"{self.dag_id}/{self.run_id}"
        return None

    def tags(self) -> dict[str, str]:
        tags = {
            "airflow_dag_id": self.dag_id,
            "airflow_run_id": self.run_id,
            "airflow_task_id": self.task_id,
            RUN_KEY_TAG: self.pipeline_run_key,
            "code_version": self.code_version,
            "image_ref": self.image_ref,
        }
        return {k: v for k, v in tags.items() if v}


def _package_version() -> str:
    try:
        return f"trainer=={metadata.version('trainer')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def data_lineage_tags(build_manifest: dict[str, Any]) -> dict[str, str]:
    """Snapshot hash, feature set and the warehouse source (tables/queries), as far as they are known.

    The source is in the extract manifest; the build manifest either copies it (``source``) or points at
    the extract step (``extract``/``extract_uri``/``inputs.extract``). Missing pieces are left out.
    """
    tags = {
        "snapshot_hash": build_manifest.get("snapshot_hash"),
        "snapshot_uri": build_manifest.get("snapshot_uri"),
        "feature_columns_hash": io.hash_json(list(build_manifest.get("feature_columns", []))),
        "extract_content_hash": build_manifest.get("extract_content_hash"),
    }
    source = build_manifest.get("source")
    extract_dir = (
        build_manifest.get("extract_uri")
        or build_manifest.get("extract")
        or (build_manifest.get("inputs") or {}).get("extract")
    )
    if source is None and isinstance(extract_dir, str):
        try:
            extract = io.read_manifest(extract_dir)
            source = extract.get("source")
            tags["extract_content_hash"] = tags["extract_content_hash"] or extract.get("content_hash")
        except (FileNotFoundError, OSError, ValueError) as error:
            log.warning("extract manifest not readable (%s); source lineage not tagged", error)
    if source is not None:
        tags["source"] = _truncate(source if isinstance(source, str) else json.dumps(source, sort_keys=True))
    return {k: str(v) for k, v in tags.items() if v}


def _truncate(value: str) -> str:
    return value if len(value) <= MAX_TAG_LENGTH else value[: MAX_TAG_LENGTH - 3] + "..."


def use_experiment(name: str | None = None) -> str:
    """Select the experiment (``MLFLOW_EXPERIMENT_NAME``, default customer-churn), creating it if needed.

    A new experiment stores artifacts under ``MLFLOW_ARTIFACT_LOCATION`` when that is set (the local
    embedded default); otherwise the tracking server decides.
    """
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=os.environ.get("MLFLOW_ARTIFACT_LOCATION"))
        except MlflowException:
            if client.get_experiment_by_name(name) is None:  # not a lost creation race: a real error
                raise
    return mlflow.set_experiment(name).experiment_id


def find_version_by_run_key(client: MlflowClient, model_name: str, run_key: str) -> ModelVersion | None:
    """The version of ``model_name`` a pipeline run already registered, if any (lowest if several)."""
    quoted_name, quoted_key = model_name.replace("'", "\\'"), run_key.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted_name}' and tags.{RUN_KEY_TAG} = '{quoted_key}'")
    # Re-check in Python: the filter grammar differs a little between registry backends.
    matches = [v for v in found if v.name == model_name and v.tags.get(RUN_KEY_TAG) == run_key]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def model_uri(model_name: str, version: str | int) -> str:
    return f"models:/{model_name}/{version}"

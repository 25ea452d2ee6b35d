"""The run summary: what a user wants to see after a training run, gathered from the step manifests."""

from __future__ import annotations

import json
from typing import Any

from mlcontract import layout, storage
from mlcontract.errors import MissingManifest
from mlcontract.manifests import (
    BuildManifest,
    EvaluateManifest,
    ExtractManifest,
    GateManifest,
    Manifest,
    TrainManifest,
)
from mlcontract.names import CHAMPION
from mlcontract.source import mask_uri

from mlplatform.registry import alias_version
from mlplatform.settings import Settings
from mlplatform.steps import read_step_manifest


def finished(task_id: str, manifest: type[Manifest]) -> Any | None:
    """A step's manifest, or None when the step did not finish (a failed or skipped branch)."""
    try:
        return read_step_manifest(task_id, manifest)
    except MissingManifest:
        return None


def pick(manifest: Manifest | None, **fields: str) -> dict[str, Any]:
    """``{name: manifest.<field>}``, all None when the step did not finish."""
    return {name: getattr(manifest, field) if manifest else None for name, field in fields.items()}


def gate_summary(gate: GateManifest | None) -> dict[str, Any]:
    return {"success": gate.success if gate else None,
            "failures": [failure.model_dump(mode="json") for failure in gate.failures] if gate else []}


def write_run_summary(settings: Settings, *, decision: dict, best_trial: dict) -> dict:
    from airflow.sdk import get_current_context

    context = get_current_context()
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    extract = finished("extract", ExtractManifest)
    build = finished("build_features", BuildManifest)
    train = finished("train_model", TrainManifest)
    evaluation = finished("evaluate", EvaluateManifest)
    summary = {
        "dag_id": dag_id,
        "run_id": run_id,
        "rows": {**pick(extract, extracted="rows"), **pick(build, features="rows")},
        "snapshot": pick(build, hash="snapshot_hash", uri="snapshot_uri", reused="reused", task="task",
                         classes="classes", split_method="split_method"),
        "gates": {
            "raw": gate_summary(finished("validate_raw", GateManifest)),
            "features": gate_summary(finished("validate_features", GateManifest)),
        },
        "best_trial": best_trial,
        "model": {
            "name": settings.registered_model_name,
            **pick(train, version="model_version", uri="model_uri", mlflow_run_id="mlflow_run_id", task="task",
                   metrics="metrics"),
            # the naive baseline's test metrics: what a lower-is-better promotion metric had to beat
            "baseline": evaluation.baseline if evaluation else None,
        },
        "decision": decision,
        "champion_version": alias_version(settings.mlflow_tracking_uri, settings.registered_model_name, CHAMPION),
        "mlflow_tracking_uri": mask_uri(settings.mlflow_tracking_uri),
        "artifacts": layout.run_dir(settings.artifact_root, dag_id, run_id),
    }
    storage.write_json(
        storage.join_uri(layout.step_dir(settings.artifact_root, dag_id, run_id, "report"), layout.SUMMARY_FILE),
        summary,
    )
    storage.write_json(layout.latest_summary_uri(settings.artifact_root, dag_id), summary)
    print(json.dumps(summary, indent=2, default=str))
    return summary

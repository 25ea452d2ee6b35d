"""The run summary: what a user wants to see after a training run, gathered from the step manifests."""

from __future__ import annotations

from typing import Any

from mlplatform.settings import Settings


def _maybe(task_id: str) -> dict[str, Any]:
    from mlplatform.steps import read_step_manifest

    try:
        return read_step_manifest(task_id)
    except FileNotFoundError:
        return {}


def latest_summary_uri(artifact_root: str, dag_id: str) -> str:
    return f"{artifact_root}/runs/{dag_id}/latest-summary.json"


def write_run_summary(settings: Settings, *, decision: dict, best_trial: dict) -> dict:
    from airflow.sdk import get_current_context
    from features import io

    from mlplatform.registry import CHAMPION, alias_version
    from mlplatform.steps import step_output_uri

    context = get_current_context()
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    extract, build, train = _maybe("extract"), _maybe("build_features"), _maybe("train_model")
    gates = {
        name: {"success": manifest.get("success"), "failures": manifest.get("failures", [])}
        for name, manifest in (("raw", _maybe("validate_raw")), ("features", _maybe("validate_features")))
    }
    summary = {
        "dag_id": dag_id,
        "run_id": run_id,
        "rows": {"extracted": extract.get("rows"), "features": build.get("rows")},
        "snapshot": {"hash": build.get("snapshot_hash"), "uri": build.get("snapshot_uri"), "reused": build.get("reused")},
        "gates": gates,
        "best_trial": best_trial,
        "model": {
            "name": settings.registered_model_name,
            "version": train.get("model_version"),
            "uri": train.get("model_uri"),
            "mlflow_run_id": train.get("mlflow_run_id"),
            "metrics": train.get("metrics"),
        },
        "decision": decision,
        "champion_version": alias_version(settings.mlflow_tracking_uri, settings.registered_model_name, CHAMPION),
        "mlflow_tracking_uri": settings.mlflow_tracking_uri if "@" not in settings.mlflow_tracking_uri else "(set)",
        "artifacts": step_output_uri(settings.artifact_root, dag_id, run_id, ""),
    }
    io.atomic_write_json(step_output_uri(settings.artifact_root, dag_id, run_id, "report") + "/summary.json", summary)
    io.atomic_write_json(latest_summary_uri(settings.artifact_root, dag_id), summary)
    return summary

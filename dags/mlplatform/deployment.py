"""Deployment records: what each serving alias should run.

Locally ``make serve`` reads the record and starts an MLflow model server for that version; on a cluster the
chart's per-alias Deployments serve ``models:/<name>@<alias>``. Writing the record is idempotent per DAG run.
"""

from __future__ import annotations

from datetime import datetime, timezone


DEPLOY_MODES = ("full", "ab_test")


def deployment_uri(artifact_root: str, model_name: str, alias: str = "champion") -> str:
    return f"{artifact_root}/deployments/{model_name}/{alias}.json"


def record_deployment(
    artifact_root: str, model_name: str, version: str, *, mode: str, dag_id: str, run_id: str,
    alias: str = "champion", challenger_version: str | None = None, challenger_share: float = 0.0,
) -> dict:
    """Write what serving runs for ``alias``; in ``ab_test`` mode the challenger takes ``challenger_share``."""
    from features import io

    if mode not in DEPLOY_MODES:
        raise ValueError(f"deploy mode {mode!r}: expected one of {', '.join(DEPLOY_MODES)}")
    if mode == "ab_test" and (challenger_version is None or not 0.0 < challenger_share < 1.0):
        raise ValueError("an A/B deployment needs a challenger version and a challenger share in (0, 1)")
    record = {
        "model_name": model_name,
        "alias": alias,
        "version": str(version),
        "model_uri": f"models:/{model_name}/{version}",
        "mode": mode,
        "challenger_version": str(challenger_version) if mode == "ab_test" else None,
        "challenger_share": float(challenger_share) if mode == "ab_test" else 0.0,
        "dag_id": dag_id,
        "run_id": run_id,
        "deployed_at": datetime.now(timezone.utc).isoformat(),
    }
    io.atomic_write_json(deployment_uri(artifact_root, model_name, alias), record)
    return record


def read_deployment(artifact_root: str, model_name: str, alias: str = "champion") -> dict:
    from features import io

    return io.read_json(deployment_uri(artifact_root, model_name, alias))

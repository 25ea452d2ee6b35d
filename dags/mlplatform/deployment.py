"""Deployment records: what each serving alias should run.

Locally ``make serve`` reads the record and starts an MLflow model server for that version; on a cluster the
chart's per-alias Deployments serve ``models:/<name>@<alias>``. Writing the record is idempotent per DAG run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from mlcontract import layout, storage
from mlcontract.names import AB_TEST, CHAMPION, DEPLOY_MODES, FULL
from mlcontract.registry import model_uri
from pydantic import BaseModel, ConfigDict


class Deployment(BaseModel):
    """``{root}/deployments/{model}/{alias}.json``; in ``ab_test`` mode the challenger takes its share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str
    alias: str
    version: str
    model_uri: str
    mode: Literal["full", "ab_test"]
    challenger_version: str | None = None
    challenger_share: float = 0.0
    dag_id: str
    run_id: str
    deployed_at: str

    @property
    def ab_test(self) -> bool:
        return self.mode == AB_TEST


def record_deployment(
    artifact_root: str, model_name: str, version: str, *, mode: str, dag_id: str, run_id: str,
    alias: str = CHAMPION, challenger_version: str | None = None, challenger_share: float = 0.0,
) -> dict:
    """Write what serving runs for ``alias``; in ``ab_test`` mode the challenger takes ``challenger_share``."""
    if mode not in DEPLOY_MODES:
        raise ValueError(f"deploy mode {mode!r}: expected one of {', '.join(DEPLOY_MODES)}")
    if mode == AB_TEST and (challenger_version is None or not 0.0 < challenger_share < 1.0):
        raise ValueError("an A/B deployment needs a challenger version and a challenger share in (0, 1)")
    record = Deployment(
        model_name=model_name,
        alias=alias,
        version=str(version),
        model_uri=model_uri(model_name, version),
        mode=mode,
        challenger_version=str(challenger_version) if mode == AB_TEST else None,
        challenger_share=float(challenger_share) if mode == AB_TEST else 0.0,
        dag_id=dag_id,
        run_id=run_id,
        deployed_at=datetime.now(UTC).isoformat(),
    )
    storage.write_json(layout.deployment_uri(artifact_root, model_name, alias), record.model_dump())
    return record.model_dump()


def read_deployment(artifact_root: str, model_name: str, alias: str = CHAMPION) -> Deployment | None:
    """The alias's deployment record, or None before anything was deployed."""
    uri = layout.deployment_uri(artifact_root, model_name, alias)
    return Deployment.model_validate(storage.read_json(uri)) if storage.exists(uri) else None


def full_deployment(artifact_root: str, model_name: str, version: str, *, dag_id: str, run_id: str) -> dict:
    """The champion serves all traffic (after a promotion, a rollback or the end of an A/B test)."""
    return record_deployment(artifact_root, model_name, version, mode=FULL, dag_id=dag_id, run_id=run_id)

"""Manifests of the trainer image's steps (see docs/steps.md for what each step writes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mlcontract.manifests.base import Manifest
from mlcontract.rules import Decision


class TrialManifest(Manifest):
    """``trial``: one hyperparameter set fitted on train, scored on valid (no MLflow)."""

    step: Literal["trial"] = "trial"
    params: dict[str, Any]
    seed: int
    trial_index: int | None = None
    valid_auc: float
    best_iteration: int
    rounds: int
    device: str
    snapshot_hash: str
    rows: dict[str, int]
    fit_seconds: float


class TrainManifest(Manifest):
    """``train``: the final fit, logged to MLflow and registered as ``challenger``.

    The same manifest, minus the version, is stored with the MLflow run before registering, so a retry
    that finds the registered version rebuilds it exactly.
    """

    step: Literal["train"] = "train"
    model_name: str
    logged_model_uri: str
    mlflow_run_id: str
    metrics: dict[str, float]
    threshold: float
    params: dict[str, Any]
    seed: int
    device: str
    best_iteration: int
    feature_columns: list[str]
    snapshot_hash: str
    pipeline_run_key: str | None = None
    plots_uri: str
    fit_seconds: float
    model_version: str | None = None
    model_uri: str | None = None


class ModelEvaluation(BaseModel):
    """One model scored on the test split: its metrics, or why it could not be compared."""

    model_config = ConfigDict(extra="forbid")

    version: str
    run_id: str | None = None
    comparable: bool
    metrics: dict[str, float] | None = None
    reason: str | None = None


class EvaluateManifest(Manifest):
    """``evaluate``: challenger and champion on the same test rows."""

    step: Literal["evaluate"] = "evaluate"
    model_name: str
    snapshot_hash: str
    test_rows: int
    threshold: float
    challenger: ModelEvaluation
    champion: ModelEvaluation | None = None


class ScoreManifest(Manifest):
    """``score``: a day's predictions by the version behind an alias (and the A/B challenger arm)."""

    step: Literal["score"] = "score"
    rows: dict[str, int]
    model_name: str
    alias: str
    model_version: str
    model_run_id: str | None = None
    versions: dict[str, str]
    ab_challenger_share: float
    score_date: str
    dag_run_id: str
    reference_snapshot_uri: str | None = None
    feature_columns: list[str] | None = None
    score_mean: float | None = None
    score_std: float | None = None


class MonitorManifest(Manifest):
    """``monitor``: drift and realised performance of the champion for one score date, with the rollback
    and A/B decisions (:mod:`mlcontract.rules`); the monitoring DAG acts on them."""

    step: Literal["monitor"] = "monitor"
    model_name: str
    score_date: str
    rows: dict[str, int]
    reference: dict[str, Any]
    thresholds: dict[str, float]
    ignored_features: list[str]
    drift_evaluated: bool
    drift_note: str | None = None
    psi: dict[str, float]
    breached_features: list[str]
    missing_features: list[str]
    prediction_psi: float | None = None
    drift_detected: bool
    labels: str | None = None
    labels_available: bool
    realised: dict[str, Any]
    rollback: Decision
    ab: dict[str, Any] | None = None
    ab_decision: Decision | None = None

"""Manifests of the trainer image's steps (see docs/steps.md for what each step writes)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from mlcontract.manifests.base import Manifest
from mlcontract.rules import Decision, Score

Task = Literal["binary", "multiclass", "regression"]


def _filled(data: Any, field: str, older: str) -> Any:
    """Manifests written before tasks existed hold only the AUC (``older``): it is ``field`` too."""
    if isinstance(data, dict) and data.get(field) is None and data.get(older) is not None:
        return {**data, field: data[older]}
    return data


def finite(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """NaN and infinity as None: a metric that cannot be computed, in a manifest that stays valid JSON."""
    if metrics is None:
        return None
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


# Metrics by name; one that cannot be computed (NaN: one class in the test rows) is None, so manifests stay JSON.
Metrics = Annotated[dict[str, float | int | None], BeforeValidator(finite)]


class TrialManifest(Manifest):
    """``trial``: one hyperparameter set fitted on train, scored on valid (no MLflow)."""

    step: Literal["trial"] = "trial"
    params: dict[str, Any]
    seed: int
    trial_index: int | None = None
    task: Task = "binary"
    # the early-stopping metric on the valid split (xgboost's name: auc, mlogloss, rmse) and its direction
    valid_metric: float
    metric: str = "auc"
    higher_is_better: bool = True
    valid_auc: float | None = None  # binary only: the same as valid_metric, kept for readers of older runs
    best_iteration: int
    rounds: int
    device: str
    snapshot_hash: str
    rows: dict[str, int]
    fit_seconds: float

    @model_validator(mode="before")
    @classmethod
    def _metric_from_auc(cls, data: Any) -> Any:
        return _filled(data, "valid_metric", "valid_auc")


class TrainManifest(Manifest):
    """``train``: the final fit, logged to MLflow and registered as ``challenger``.

    The same manifest, minus the version, is stored with the MLflow run before registering, so a retry
    that finds the registered version rebuilds it exactly.
    """

    step: Literal["train"] = "train"
    model_name: str
    logged_model_uri: str
    mlflow_run_id: str
    task: Task = "binary"
    classes: list[str] | None = None  # multiclass: the user's class labels, by class index
    metrics: Metrics
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
    # what makes two fits identical (snapshot, params, seed, rounds, device, code): a re-trigger of the same
    # data reuses the version registered with this key instead of registering an identical one
    fit_key: str | None = None
    # set when this run reused such a version: which pipeline run registered it
    reused_from: str | None = None
    # False when the judged test metric cannot be computed: `challenger` was left where it was
    challenger_alias_set: bool = True


class ModelEvaluation(BaseModel):
    """One model scored on the test split: its metrics, or why it could not be compared."""

    model_config = ConfigDict(extra="forbid")

    version: str
    run_id: str | None = None
    comparable: bool
    metrics: Metrics | None = None
    reason: str | None = None
    # how the model's features were made: "own snapshot" (rebuilt with its own spec and vocabulary on the
    # test rows), "same snapshot" (it was trained on this snapshot's features) or "test split" (older runs)
    features: str | None = None


class ChampionFeaturesManifest(Manifest):
    """``build-champion-features``: the champion's own features on the challenger's test rows.

    Built with the champion's training snapshot's spec, category vocabulary and columns, from the same
    extract and the same (entity, snapshot) rows as the challenger's test split, so both models are judged on
    the same rows with the features each was trained on. ``champion_version`` None: there is no champion.
    ``comparable`` False: the champion's features cannot be made from this data, ``reason`` says why.
    """

    step: Literal["build-champion-features"] = "build-champion-features"
    model_name: str
    champion_version: str | None = None
    reference_snapshot_uri: str | None = None
    snapshot_hash: str  # the challenger's snapshot, whose test rows these are
    same_snapshot: bool = False  # the champion was trained on this very snapshot: its test split is reused
    comparable: bool = False
    reason: str | None = None
    rows: int = 0
    feature_columns: list[str] = Field(default_factory=list)


class EvaluateManifest(Manifest):
    """``evaluate``: challenger and champion on the same test rows."""

    step: Literal["evaluate"] = "evaluate"
    model_name: str
    snapshot_hash: str
    test_rows: int
    threshold: float
    task: Task = "binary"
    # the naive baseline (the train split's class prior / mean, predicted for every row) on the same rows:
    # what a lower-is-better promotion metric must beat
    baseline: Metrics | None = None
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
    task: Task = "binary"
    classes: list[str] | None = None  # multiclass: the values predicted_class may take
    versions: dict[str, str]
    ab_challenger_share: float
    score_date: str
    dag_run_id: str
    reference_snapshot_uri: str | None = None
    feature_columns: list[str] | None = None
    score_mean: float | None = None
    score_std: float | None = None


class MonitorThresholds(BaseModel):
    """The monitor's limits: drift above ``psi``; no verdict on fewer than ``min_rows``; the rules' margins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    psi: float = 0.2
    min_rows: int = 100
    rollback_margin: float = 0.01
    ab_margin: float = 0.0


class RealisedMetric(BaseModel):
    """A model's value of its task's metric (``metric``: auc, log_loss, rmse) on the score date's labelled
    rows, or why there is none."""

    model_config = ConfigDict(extra="forbid")

    version: str | None
    metric: str = "auc"
    value: float | None = None
    auc: float | None = None  # binary: the same as value
    rows: int = 0
    positive_rate: float | None = None
    comparable: bool = True
    reason: str | None = None  # why the model could not be scored on these rows
    source: str | None = None  # the champion's scores: "predictions", "rescored", or why neither

    @model_validator(mode="before")
    @classmethod
    def _value_from_auc(cls, data: Any) -> Any:
        return _filled(data, "value", "auc")

    def score(self) -> Score:
        return Score(version=self.version, value=self.value, rows=self.rows, comparable=self.comparable,
                     reason=self.reason)


RealisedAUC = RealisedMetric  # the name before tasks other than binary existed


class Realised(BaseModel):
    """Realised performance: the champion on its labelled predictions, the previous champion on the same rows."""

    model_config = ConfigDict(extra="forbid")

    champion: RealisedMetric | None = None
    previous: RealisedMetric | None = None


class MonitorManifest(Manifest):
    """``monitor``: drift and realised performance of the champion for one score date, with the rollback
    and A/B decisions (:mod:`mlcontract.rules`); the monitoring DAG acts on them.

    - ``outputs``: ``predictions``, ``features`` (None when not published) and ``labels`` (the labels file
      read, None without ``--labels``).
    - ``rows``: ``predictions``, ``champion_arm``, ``features``, ``labels``.
    - drift: ``drift_evaluated`` (False with the reason in ``drift_note``), ``psi`` per feature,
      ``breached_features`` (PSI above ``thresholds.psi``, worst first), ``missing_features``,
      ``prediction_psi`` (of ``score``: binary/multiclass over fixed bins of [0, 1], regression over the
      test predictions' quantile bins), ``predicted_class_psi`` (multiclass), ``drift_detected``;
      ``reference`` names the model version whose training reference was used (``version``, ``run_id``,
      ``artifact``).
    - ``labels_source``: the warehouse source of the labels (the ``extract-labels`` manifest's ``source``).
    - ``task``: the champion's task, which decides the metric of ``realised``, ``rollback`` and ``ab``.
    - ``realised``: ``champion`` and ``previous`` (:class:`RealisedMetric`), None before labels exist.
    - ``rollback``: a :class:`~mlcontract.rules.Decision` (``rule="rollback"``); roll back when
      ``rollback.action == "rollback"`` (``rollback.acts``), ``rollback.reason`` says why (not);
      ``rollback.incumbent`` is the judged champion, ``rollback.candidate`` the previous champion.
    - ``ab``: the A/B test's :class:`~mlcontract.rules.Decision` (``rule="ab_test"``), None unless the
      predictions hold both arms and labels exist: ``ab.action`` is ``promote``, ``keep`` or
      ``insufficient_data``; ``ab.incumbent`` is the champion arm and ``ab.candidate`` the challenger arm
      (``version`` = the versions that served the arm, ``value`` = the task's metric, ``rows`` = labelled rows);
      ``ab.margin``, ``ab.min_rows``.
    """

    step: Literal["monitor"] = "monitor"
    model_name: str
    task: Task = "binary"
    score_date: str
    rows: dict[str, int]
    reference: dict[str, str | None]
    thresholds: MonitorThresholds
    ignored_features: list[str]
    drift_evaluated: bool
    drift_note: str | None = None
    psi: dict[str, float]
    breached_features: list[str]
    missing_features: list[str]
    prediction_psi: float | None = None
    predicted_class_psi: float | None = None  # multiclass: PSI of the predicted-class shares
    drift_detected: bool
    labels_source: dict[str, Any] | None = None
    labels_available: bool
    realised: Realised
    rollback: Decision
    ab: Decision | None = None

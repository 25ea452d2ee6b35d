"""`trainer monitor`: drift and realised performance of the served model for one score date.

Inputs are what batch prediction published for the date ``D``
(``{predictions_root}/{model_name}/{D}/predictions.parquet`` and ``features.parquet``), the training
reference stored with the model (``reference/reference.json``, see :mod:`trainer.drift`) and, once they
exist, the labels at snapshot ``D`` (the ``features extract-labels`` step's ``labels.parquet``).

- **Drift**: PSI of every reference feature on ``features.parquet`` and of the champion's scores
  (prediction drift; multiclass also of the predicted classes' shares), against the champion's reference
  (the previous champion's when the champion has none).
- **Realised performance**: the champion's value of its task's metric (binary AUC, multiclass log loss,
  regression RMSE: :data:`mlcontract.rules.TASK_METRICS`) on its labelled predictions, and the previous
  champion's on the *same* entities, scored from ``features.parquet`` with the columns of its own signature
  (not comparable, with the reason, when they are missing). A multiclass log loss needs every class's
  probability, which the predictions do not hold: those models are rescored from ``features.parquet``.
  The rollback rule (:func:`mlcontract.rules.decide_rollback`) recommends a rollback when the champion is
  worse than the previous champion by more than a margin.
- **A/B test**: when the predictions hold a ``champion`` and a ``challenger`` arm and labels exist, the
  metric of each arm and the A/B rule's decision (:func:`mlcontract.rules.decide_ab`).

The task (and multiclass classes) is the champion's, as recorded with its version; realised labels are
read as that task stores them (multiclass: the user's class labels, mapped to the model's class indices).

The step only measures and recommends; the monitoring DAG acts (retrain signal, rollback, A/B decision).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import date
from typing import Any

import numpy as np
import polars as pl
from mlcontract import layout, registry, storage
from mlcontract.errors import StepInputError
from mlcontract.manifests import LabelsManifest, MonitorManifest
from mlcontract.manifests.trainer import MonitorThresholds, Realised, RealisedMetric
from mlcontract.names import (
    BINARY,
    CHALLENGER,
    CHAMPION,
    ENTITY,
    FEATURES_FILE,
    LABEL,
    LABELS_FILE,
    MULTICLASS,
    PREDICTIONS_FILE,
    PREVIOUS_CHAMPION,
    REGRESSION,
    SCORE,
)
from mlcontract.rules import Decision, Score, decide_ab, decide_rollback, task_metric
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainer import drift, predict, tracking
from trainer.errors import ModelVersionNotFound
from trainer.metrics import task_metrics
from trainer.train import REFERENCE_ARTIFACT

PREDICTED_CLASS = "predicted_class"

log = logging.getLogger(__name__)


# --- inputs ---------------------------------------------------------------------------------------------


def read_labels(
    labels_dir: str, score_date: date, task: tracking.ModelTask | None = None
) -> tuple[LabelsManifest, pl.DataFrame]:
    """The ``extract-labels`` step's manifest and labels at ``score_date``: ``entity_id`` (Utf8), ``label``
    as the task stores it (binary Int8 0/1, multiclass the class index, regression Float64), one row per
    entity; empty when none exist yet. Multiclass labels the model does not know are left out (logged)."""
    task = task or tracking.ModelTask()
    manifest = LabelsManifest.read(labels_dir)
    if manifest.score_date != score_date.isoformat():
        raise StepInputError(
            f"{labels_dir}: labels were extracted for {manifest.score_date}, not for the score date {score_date}"
        )
    uri = storage.join_uri(labels_dir, LABELS_FILE)
    frame = storage.read_parquet(uri)
    missing = [c for c in (ENTITY, LABEL) if c not in frame.columns]
    if missing:
        raise StepInputError(f"{uri}: missing columns {missing}")
    frame = frame.select(pl.col(ENTITY).cast(pl.Utf8), LABEL).unique(ENTITY)
    if task.task != MULTICLASS:
        dtype = pl.Float64 if task.task == REGRESSION else pl.Int8
        try:
            return manifest, frame.with_columns(pl.col(LABEL).cast(dtype))
        except pl.exceptions.InvalidOperationError:
            raise StepInputError(
                f"{uri}: column {LABEL!r} holds {frame[LABEL].dtype} values, not the labels of a {task.task} "
                f"model ({'numbers' if task.task == REGRESSION else '0/1'})"
            ) from None
    # multiclass: the user's class labels, as the model's class indices
    index = {label: i for i, label in enumerate(task.classes or [])}
    mapped = frame.with_columns(pl.col(LABEL).cast(pl.Utf8).replace_strict(index, default=None, return_dtype=pl.Int64))
    unknown = mapped.filter(pl.col(LABEL).is_null())
    if unknown.height:
        examples = frame.join(unknown.select(ENTITY), on=ENTITY)[LABEL].cast(pl.Utf8).unique().head(5).to_list()
        log.warning("%s: %d labels are not classes of the model (%s), left out", uri, unknown.height, examples)
    return manifest, mapped.drop_nulls(LABEL)


def read_day(uri: str, required: tuple[str, ...]) -> pl.DataFrame:
    """A published file of the score date, with ``entity_id`` as Utf8."""
    frame = storage.read_parquet(uri)
    for column in required:
        if column not in frame.columns:
            raise StepInputError(f"{uri}: missing column {column!r}")
    return frame.with_columns(pl.col(ENTITY).cast(pl.Utf8))


def load_reference(client: MlflowClient, version) -> dict[str, Any] | None:
    """The training reference logged with a model version's run; None for models trained without one."""
    import mlflow

    if version is None or not version.run_id:
        return None
    try:
        return mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{REFERENCE_ARTIFACT}")
    except (MlflowException, OSError) as error:
        log.warning("model version %s has no training reference (%s)", version.version, error)
        return None


# --- measurements ---------------------------------------------------------------------------------------


def feature_drift(
    reference: dict[str, Any], features: pl.DataFrame, threshold: float, ignore: tuple[str, ...] = ()
) -> dict[str, Any]:
    """PSI per reference feature present in ``features``; features the reference has but the data lacks
    are listed, not guessed. ``ignore``d features (e.g. ones that grow with time by design) are skipped."""
    psi: dict[str, float] = {}
    missing = []
    for name, entry in reference["features"].items():
        if name in ignore:
            continue
        if name not in features.columns:
            missing.append(name)
            continue
        values = features[name].cast(pl.Float64).to_numpy()
        psi[name] = round(drift.psi_against(entry, values, reference.get("epsilon", drift.EPSILON)), 6)
    breached = sorted((n for n, v in psi.items() if v > threshold), key=lambda n: -psi[n])
    return {"psi": psi, "breached_features": breached, "missing_features": missing}


def realised_metric(
    task: str, version: str | None, labels: np.ndarray, output: np.ndarray, **extra: Any
) -> RealisedMetric:
    """A model's realised value of its task's metric on labelled rows (None when it is undefined)."""
    metric = task_metric(task).name
    value = task_metrics(task, labels, output)[metric] if len(labels) else math.nan
    value = None if math.isnan(value) else round(float(value), 6)
    return RealisedMetric(
        version=version,
        metric=metric,
        value=value,
        auc=value if task == BINARY else None,
        rows=len(labels),
        positive_rate=round(float(np.mean(labels)), 6) if task == BINARY and len(labels) else None,
        **extra,
    )


def _score_with(model_name: str, version: str, frame: pl.DataFrame) -> tuple[np.ndarray | None, str | None]:
    """Output of a registered version on ``frame``, on its own signature's columns, or the reason why not."""
    try:
        return predict.predict(registry.model_uri(model_name, version), frame), None
    except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"


def _output(
    model_name: str, task: str, version: str, rows: pl.DataFrame, features: pl.DataFrame | None
) -> tuple[pl.DataFrame, np.ndarray | None, str]:
    """``version``'s output on labelled prediction ``rows``: the published scores when that version made
    them and they are the model's whole output (not for multiclass), else rescored from the day's features.
    Returns the rows the output belongs to, the output (None when there is none) and where it came from."""
    served = rows["model_version"].cast(pl.Utf8).unique().to_list() if "model_version" in rows.columns else []
    if task != MULTICLASS and served in ([], [version]):
        return rows, rows[SCORE].to_numpy(), "predictions"
    why = f"predictions by v{served}" if served != [version] else "multiclass probabilities"
    if features is None:
        return rows, None, f"{why}, no features to rescore with v{version}"
    rescored_rows = rows.select(ENTITY, LABEL).join(features, on=ENTITY, how="inner")
    output, reason = _score_with(model_name, version, rescored_rows)
    return rescored_rows, output, "rescored" if reason is None else reason


# --- the step -------------------------------------------------------------------------------------------


def run_monitor(
    model_name: str,
    score_date: date,
    artifact_root: str,
    out: str,
    *,
    labels_dir: str | None = None,
    thresholds: MonitorThresholds | None = None,
    ignore_features: tuple[str, ...] = (),
) -> MonitorManifest:
    started = time.perf_counter()
    thresholds = thresholds or MonitorThresholds()
    day_dir = layout.predictions_dir(artifact_root, model_name, score_date.isoformat())
    predictions_uri = storage.join_uri(day_dir, PREDICTIONS_FILE)
    features_uri = storage.join_uri(day_dir, FEATURES_FILE)
    if not storage.exists(predictions_uri):
        raise StepInputError(f"no predictions for {model_name} on {score_date}: {predictions_uri} does not exist")
    predictions = read_day(predictions_uri, (ENTITY, SCORE))
    if "alias" not in predictions.columns:
        predictions = predictions.with_columns(pl.lit(CHAMPION).alias("alias"))
    features = read_day(features_uri, (ENTITY,)) if storage.exists(features_uri) else None
    champion_arm = predictions.filter(pl.col("alias") == CHAMPION)
    log.info(
        "%s on %s: %s predictions (%s champion arm), %s feature rows",
        model_name, score_date, f"{predictions.height:,}", f"{champion_arm.height:,}",
        "no" if features is None else f"{features.height:,}",
    )

    client = MlflowClient()
    champion = registry.version_by_alias(client, model_name, CHAMPION)
    if champion is None:
        raise ModelVersionNotFound(f"{model_name} has no @{CHAMPION}: nothing is served, nothing to monitor")
    previous = registry.version_by_alias(client, model_name, PREVIOUS_CHAMPION)
    task = tracking.model_task(champion)
    judged = task_metric(task.task)

    # --- drift against the training reference
    reference, reference_version = load_reference(client, champion), champion
    if reference is None and previous is not None:
        reference, reference_version = load_reference(client, previous), previous
    drift_report: dict[str, Any] = {"psi": {}, "breached_features": [], "missing_features": []}
    prediction_psi = predicted_class_psi = None
    if reference is None:
        drift_note = "no training reference stored with the champion or the previous champion"
    elif features is None or features.height < thresholds.min_rows:
        drift_note = f"too few feature rows ({0 if features is None else features.height} < {thresholds.min_rows})"
    else:
        drift_note = None
        drift_report = feature_drift(reference, features, thresholds.psi, tuple(ignore_features))
        if champion_arm.height:
            prediction_psi = round(drift.psi_against(reference["score"], champion_arm[SCORE].to_numpy()), 6)
            if "predicted_class" in reference and PREDICTED_CLASS in champion_arm.columns:
                predicted_class_psi = round(drift.category_psi_against(
                    reference["predicted_class"], champion_arm[PREDICTED_CLASS].to_list()), 6)
    drift_detected = bool(drift_report["breached_features"]) or any(
        value is not None and value > thresholds.psi for value in (prediction_psi, predicted_class_psi)
    )
    if drift_note:
        log.warning("drift not evaluated: %s", drift_note)
    else:
        log.info(
            "PSI max %.3f (%s), prediction PSI %s, predicted-class PSI %s: drift %s",
            max(drift_report["psi"].values(), default=0.0),
            ", ".join(drift_report["breached_features"]) or "no feature above the threshold",
            prediction_psi, predicted_class_psi, "DETECTED" if drift_detected else "not detected",
        )

    # --- realised performance, once labels exist
    labels_manifest, label_frame = read_labels(labels_dir, score_date, task) if labels_dir else (None, None)
    labels_available = label_frame is not None and label_frame.height > 0
    realised, ab = Realised(), None
    if labels_available:
        realised = _realised(model_name, task.task, champion, previous, champion_arm, features, label_frame)
        ab = _ab_test(model_name, task.task, predictions, features, label_frame, thresholds)
    rollback = decide_rollback(
        realised.champion.score() if realised.champion else None,
        realised.previous.score() if realised.previous else None,
        margin=thresholds.rollback_margin,
        min_rows=thresholds.min_rows,
        metric=judged.name,
        task=judged,
    )
    if rollback.acts:
        log.warning("ROLLBACK recommended: %s", rollback.reason)

    manifest = MonitorManifest(
        outputs={
            "predictions": predictions_uri,
            "features": features_uri if features is not None else None,
            "labels": storage.join_uri(labels_dir, LABELS_FILE) if labels_dir else None,
        },
        model_name=model_name,
        task=task.task,
        score_date=score_date.isoformat(),
        rows={
            "predictions": predictions.height,
            "champion_arm": champion_arm.height,
            "features": 0 if features is None else features.height,
            "labels": 0 if label_frame is None else label_frame.height,
        },
        reference={
            "version": str(reference_version.version) if reference else None,
            "run_id": reference_version.run_id if reference else None,
            "artifact": REFERENCE_ARTIFACT,
        },
        thresholds=thresholds,
        ignored_features=sorted(ignore_features),
        drift_evaluated=drift_note is None,
        drift_note=drift_note,
        **drift_report,
        prediction_psi=prediction_psi,
        predicted_class_psi=predicted_class_psi,
        drift_detected=drift_detected,
        labels_source=labels_manifest.source if labels_manifest else None,
        labels_available=labels_available,
        realised=realised,
        rollback=rollback,
        ab=ab,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out)
    return manifest


def _realised(model_name, task, champion, previous, champion_arm, features, label_frame) -> Realised:
    """Champion's metric on its labelled predictions; previous champion's on the same entities."""
    champion_version = str(champion.version)
    window, output, source = _output(
        model_name, task, champion_version, champion_arm.join(label_frame, on=ENTITY, how="inner"), features
    )
    champion_entry = (
        realised_metric(task, champion_version, window[LABEL].to_numpy(), output, source=source)
        if output is not None else RealisedMetric(version=champion_version, metric=task_metric(task).name,
                                                  source=source)
    )
    log.info("realised champion v%s %s %s on %s rows", champion_version, champion_entry.metric,
             champion_entry.value, champion_entry.rows)

    previous_entry = None
    if previous is not None:
        previous_version = str(previous.version)
        if features is None:
            previous_entry = RealisedMetric(version=previous_version, metric=task_metric(task).name,
                                            comparable=False, reason=f"no {FEATURES_FILE} for the score date")
        else:
            rows = window.select(ENTITY, LABEL).join(features, on=ENTITY, how="inner")
            output, reason = _previous_output(model_name, task, previous, rows)
            if reason is not None:
                log.warning("previous champion v%s not comparable: %s", previous_version, reason)
                previous_entry = RealisedMetric(version=previous_version, metric=task_metric(task).name,
                                                comparable=False, reason=reason)
            else:
                previous_entry = realised_metric(task, previous_version, rows[LABEL].to_numpy(), output)
                log.info("previous champion v%s %s %s on the same %s rows", previous_version,
                         previous_entry.metric, previous_entry.value, previous_entry.rows)
    return Realised(champion=champion_entry, previous=previous_entry)


def _previous_output(model_name, task, previous, rows) -> tuple[np.ndarray | None, str | None]:
    """The previous champion's output on ``rows``, or why it cannot be compared (another task, or features)."""
    recorded = tracking.model_task(previous)
    if recorded.task != task:
        return None, f"the previous champion is a {recorded} model, the champion {task}"
    return _score_with(model_name, str(previous.version), rows)


def _ab_test(
    model_name: str,
    task: str,
    predictions: pl.DataFrame,
    features: pl.DataFrame | None,
    label_frame: pl.DataFrame,
    thresholds: MonitorThresholds,
) -> Decision | None:
    """The A/B rule on each arm's labelled predictions; None unless both arms served this day."""
    arms = set(predictions["alias"].unique().to_list())
    if not {CHAMPION, CHALLENGER} <= arms:
        return None
    judged = task_metric(task)
    scores = {}
    for arm in (CHAMPION, CHALLENGER):
        rows = predictions.filter(pl.col("alias") == arm).join(label_frame, on=ENTITY, how="inner")
        versions = rows["model_version"].cast(pl.Utf8).unique().sort().to_list() if "model_version" in rows.columns else []
        if task == MULTICLASS:
            scores[arm] = _rescored_arm(model_name, versions, rows, features)
        else:
            labels, output = rows[LABEL].to_numpy(), rows[SCORE].to_numpy()
            entry = realised_metric(task, ",".join(versions) or None, labels, output)
            scores[arm] = Score(version=entry.version, value=entry.value, rows=entry.rows)
    decision = decide_ab(scores[CHAMPION], scores[CHALLENGER], margin=thresholds.ab_margin,
                         min_rows=thresholds.min_rows, metric=judged.name, task=judged)
    log.info("A/B: champion %s %s (%s rows), challenger %s %s (%s rows): %s — %s",
             judged.name, scores[CHAMPION].value, scores[CHAMPION].rows, judged.name, scores[CHALLENGER].value,
             scores[CHALLENGER].rows, decision.action, decision.reason)
    return decision


def _rescored_arm(model_name: str, versions: list[str], rows: pl.DataFrame, features: pl.DataFrame | None) -> Score:
    """A multiclass arm's log loss: each version that served it rescored on its own rows from the features."""
    labels, outputs, reasons = [], [], []
    for version in versions:
        served = rows.filter(pl.col("model_version").cast(pl.Utf8) == version)
        used, output, source = _output(model_name, MULTICLASS, version, served, features)
        if output is None:
            reasons.append(f"v{version}: {source}")
        else:
            labels.append(used[LABEL].to_numpy())
            outputs.append(output)
    label = ",".join(versions) or None
    if reasons or not outputs:
        return Score(version=label, rows=rows.height, comparable=False, reason="; ".join(reasons) or "no rows")
    entry = realised_metric(MULTICLASS, label, np.concatenate(labels), np.concatenate(outputs))
    return Score(version=entry.version, value=entry.value, rows=entry.rows)

"""`trainer monitor`: drift and realised performance of the served model for one score date.

Inputs are what batch prediction published for the date ``D``
(``{predictions_root}/{model_name}/{D}/predictions.parquet`` and ``features.parquet``), the training
reference stored with the model (``reference/reference.json``, see :mod:`trainer.drift`) and, once they
exist, the labels at snapshot ``D`` (the ``features extract-labels`` step's ``labels.parquet``).

- **Drift**: PSI of every reference feature on ``features.parquet`` and of the champion's scores
  (prediction drift), against the champion's reference (the previous champion's when the champion has none).
- **Realised performance**: the champion's AUC on its labelled predictions, and the previous champion's
  AUC on the *same* entities, scored from ``features.parquet`` with the columns of its own signature (not
  comparable, with the reason, when they are missing). The rollback rule (:func:`mlcontract.rules.decide_rollback`)
  recommends a rollback when the champion is worse than the previous champion by more than a margin.
- **A/B test**: when the predictions hold a ``champion`` and a ``challenger`` arm and labels exist, the AUC
  of each arm and the A/B rule's decision (:func:`mlcontract.rules.decide_ab`).

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
from mlcontract.manifests.trainer import MonitorThresholds, Realised, RealisedAUC
from mlcontract.names import (
    CHALLENGER,
    CHAMPION,
    ENTITY,
    FEATURES_FILE,
    LABEL,
    LABELS_FILE,
    PREDICTIONS_FILE,
    PREVIOUS_CHAMPION,
    SCORE,
)
from mlcontract.rules import Decision, Score, decide_ab, decide_rollback
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainer import drift, predict
from trainer.errors import ModelVersionNotFound
from trainer.metrics import classification_metrics
from trainer.train import REFERENCE_ARTIFACT

log = logging.getLogger(__name__)


# --- inputs ---------------------------------------------------------------------------------------------


def read_labels(labels_dir: str, score_date: date) -> tuple[LabelsManifest, pl.DataFrame]:
    """The ``extract-labels`` step's manifest and labels at ``score_date``: ``entity_id`` (Utf8), ``label``
    (Int8), one row per entity; empty when none exist yet."""
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
    return manifest, frame.select(pl.col(ENTITY).cast(pl.Utf8), pl.col(LABEL).cast(pl.Int8)).unique(ENTITY)


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


def realised_auc(version: str | None, labels: np.ndarray, scores: np.ndarray, **extra: Any) -> RealisedAUC:
    metrics = classification_metrics(labels, scores) if len(labels) else {"auc": math.nan, "rows": 0}
    auc = metrics["auc"]
    return RealisedAUC(
        version=version,
        auc=None if math.isnan(auc) else round(float(auc), 6),
        rows=int(metrics["rows"]),
        positive_rate=None if not len(labels) else round(float(np.mean(labels)), 6),
        **extra,
    )


def _score_with(model_name: str, version: str, frame: pl.DataFrame) -> tuple[np.ndarray | None, str | None]:
    """Scores of ``frame`` by a registered version on its own signature's columns, or the reason why not."""
    try:
        return predict.predict(registry.model_uri(model_name, version), frame), None
    except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"


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

    # --- drift against the training reference
    reference, reference_version = load_reference(client, champion), champion
    if reference is None and previous is not None:
        reference, reference_version = load_reference(client, previous), previous
    drift_report: dict[str, Any] = {"psi": {}, "breached_features": [], "missing_features": []}
    prediction_psi = None
    if reference is None:
        drift_note = "no training reference stored with the champion or the previous champion"
    elif features is None or features.height < thresholds.min_rows:
        drift_note = f"too few feature rows ({0 if features is None else features.height} < {thresholds.min_rows})"
    else:
        drift_note = None
        drift_report = feature_drift(reference, features, thresholds.psi, tuple(ignore_features))
        if champion_arm.height:
            prediction_psi = round(drift.psi_against(reference["score"], champion_arm[SCORE].to_numpy()), 6)
    drift_detected = bool(drift_report["breached_features"]) or (
        prediction_psi is not None and prediction_psi > thresholds.psi
    )
    if drift_note:
        log.warning("drift not evaluated: %s", drift_note)
    else:
        log.info(
            "PSI max %.3f (%s), prediction PSI %s: drift %s",
            max(drift_report["psi"].values(), default=0.0),
            ", ".join(drift_report["breached_features"]) or "no feature above the threshold",
            prediction_psi, "DETECTED" if drift_detected else "not detected",
        )

    # --- realised performance, once labels exist
    labels_manifest, label_frame = read_labels(labels_dir, score_date) if labels_dir else (None, None)
    labels_available = label_frame is not None and label_frame.height > 0
    realised, ab = Realised(), None
    if labels_available:
        realised = _realised(model_name, champion, previous, champion_arm, features, label_frame)
        ab = _ab_test(predictions, label_frame, thresholds)
    rollback = decide_rollback(
        realised.champion.score() if realised.champion else None,
        realised.previous.score() if realised.previous else None,
        margin=thresholds.rollback_margin,
        min_rows=thresholds.min_rows,
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


def _realised(model_name, champion, previous, champion_arm, features, label_frame) -> Realised:
    """Champion AUC on its labelled predictions; previous champion's AUC on the same entities."""
    window = champion_arm.join(label_frame, on=ENTITY, how="inner")
    served = window["model_version"].cast(pl.Utf8).unique().to_list() if "model_version" in window.columns else []
    champion_version = str(champion.version)
    scores, source = window[SCORE].to_numpy(), "predictions"
    if served and served != [champion_version]:
        # The predictions were made by another version (the alias has moved since): rescore the window.
        if features is None:
            scores, source = None, f"predictions by v{served}, no features to rescore with v{champion_version}"
        else:
            rows = window.select(ENTITY, LABEL).join(features, on=ENTITY, how="inner")
            rescored, reason = _score_with(model_name, champion_version, rows)
            window = rows
            scores, source = (rescored, "rescored") if reason is None else (None, reason)
    champion_entry = (
        realised_auc(champion_version, window[LABEL].to_numpy(), scores, source=source)
        if scores is not None else RealisedAUC(version=champion_version, source=source)
    )
    log.info("realised champion v%s AUC %s on %s rows", champion_version, champion_entry.auc, champion_entry.rows)

    previous_entry = None
    if previous is not None:
        previous_version = str(previous.version)
        if features is None:
            previous_entry = RealisedAUC(version=previous_version, comparable=False,
                                         reason=f"no {FEATURES_FILE} for the score date")
        else:
            rows = window.select(ENTITY, LABEL).join(features, on=ENTITY, how="inner")
            scores, reason = _score_with(model_name, previous_version, rows)
            if reason is not None:
                log.warning("previous champion v%s not comparable: %s", previous_version, reason)
                previous_entry = RealisedAUC(version=previous_version, comparable=False, reason=reason)
            else:
                previous_entry = realised_auc(previous_version, rows[LABEL].to_numpy(), scores)
                log.info("previous champion v%s AUC %s on the same %s rows", previous_version,
                         previous_entry.auc, previous_entry.rows)
    return Realised(champion=champion_entry, previous=previous_entry)


def _ab_test(predictions: pl.DataFrame, label_frame: pl.DataFrame, thresholds: MonitorThresholds) -> Decision | None:
    """The A/B rule on each arm's labelled predictions; None unless both arms served this day."""
    arms = set(predictions["alias"].unique().to_list())
    if not {CHAMPION, CHALLENGER} <= arms:
        return None
    scores = {}
    for arm in (CHAMPION, CHALLENGER):
        rows = predictions.filter(pl.col("alias") == arm).join(label_frame, on=ENTITY, how="inner")
        versions = rows["model_version"].cast(pl.Utf8).unique().sort().to_list() if "model_version" in rows.columns else []
        entry = realised_auc(",".join(versions) or None, rows[LABEL].to_numpy(), rows[SCORE].to_numpy())
        scores[arm] = Score(version=entry.version, value=entry.auc, rows=entry.rows)
    decision = decide_ab(scores[CHAMPION], scores[CHALLENGER], margin=thresholds.ab_margin,
                         min_rows=thresholds.min_rows)
    log.info("A/B: champion AUC %s (%s rows), challenger AUC %s (%s rows): %s — %s",
             scores[CHAMPION].value, scores[CHAMPION].rows, scores[CHALLENGER].value, scores[CHALLENGER].rows,
             decision.action, decision.reason)
    return decision

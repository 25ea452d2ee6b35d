"""`trainer monitor`: drift and realised performance of the served model for one score date.

Inputs are what batch prediction published for the date ``D``
(``{predictions_root}/{model_name}/{D}/predictions.parquet`` and ``features.parquet``), the training
reference stored with the model (``reference/reference.json``, see :mod:`trainer.drift`) and, once they
exist, the labels at snapshot ``D`` from the warehouse.

- **Drift**: PSI of every reference feature on ``features.parquet`` and of the champion's scores
  (prediction drift), against the champion's reference (the previous champion's when the champion has none).
- **Realised performance**: the champion's AUC on its labelled predictions, and the previous champion's
  AUC on the *same* entities, scored from ``features.parquet`` with the columns of its own signature (not
  comparable, with the reason, when they are missing). Rollback is recommended when the champion is worse
  than the previous champion by more than a margin.
- **A/B test**: when the predictions hold a ``champion`` and a ``challenger`` arm and labels exist, the AUC
  of each arm and a decision: ``promote``, ``keep`` or ``insufficient_data``.

The step only measures and recommends; the monitoring DAG acts (retrain signal, rollback, A/B decision).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from features import io
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainer import drift, predict, tracking
from trainer.metrics import classification_metrics
from trainer.train import REFERENCE_ARTIFACT

log = logging.getLogger(__name__)

PREVIOUS_CHAMPION = "previous-champion"
ENTITY = "entity_id"
PREDICTIONS_FILE = "predictions.parquet"
FEATURES_FILE = "features.parquet"
PROMOTE, KEEP, INSUFFICIENT = "promote", "keep", "insufficient_data"


@dataclass(frozen=True)
class LabelSource:
    """Where realised labels come from: a table or a query, and the names of its columns."""

    table: str | None = "churn_labels"
    query: str | None = None
    entity_key: str = "customer_id"
    snapshot_column: str = "snapshot_ts"
    label_column: str = "churned"

    def __post_init__(self) -> None:
        from features.extract import IDENTIFIER

        if bool(self.table) == bool(self.query):
            raise ValueError("give exactly one of --labels-table or --labels-query")
        for option in ("table", "entity_key", "snapshot_column", "label_column"):
            value = getattr(self, option)
            if value and not IDENTIFIER.match(value):
                raise ValueError(f"--labels {option.replace('_', '-')} {value!r} is not a plain SQL identifier")

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    min_rows: int = 100
    rollback_margin: float = 0.01
    ab_margin: float = 0.0


# --- inputs ---------------------------------------------------------------------------------------------


def _read_parquet(uri: str) -> pl.DataFrame:
    fs, path = io.filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pl.read_parquet(handle)


def read_labels(warehouse_uri: str, source: LabelSource, day: date) -> pl.DataFrame:
    """Labels at snapshot ``day``: ``entity_id`` (Utf8), ``label`` (Int8); empty when none exist yet."""
    import sqlalchemy as sa
    from features.extract import _parse_timestamps, _Warehouse

    warehouse = _Warehouse(warehouse_uri)
    relation = warehouse.relation("labels", source.table, source.query)
    columns = [source.entity_key, source.snapshot_column, source.label_column]
    available = warehouse.columns("labels", relation)
    missing = [c for c in columns if c not in available]
    if missing:
        raise SystemExit(f"labels source lacks column(s) {missing} (has {available})")
    start, end = datetime(day.year, day.month, day.day), datetime(day.year, day.month, day.day) + timedelta(days=1)
    # SQLite keeps timestamps as text: compare ISO prefixes; the exact day is checked after parsing.
    bounds = (start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")) if warehouse.is_sqlite else (start, end)
    snapshot = warehouse.quote(source.snapshot_column)
    sql = (
        f"SELECT {', '.join(warehouse.quote(c) for c in columns)} FROM {relation} AS src "
        f"WHERE {snapshot} >= :start AND {snapshot} < :end"
    )
    try:
        with warehouse.engine.connect() as connection:
            rows = connection.execute(sa.text(sql), {"start": bounds[0], "end": bounds[1]}).all()
    finally:
        warehouse.engine.dispose()
    frame = pl.DataFrame(rows, schema=["key", "snapshot", "label"], orient="row", infer_schema_length=None)
    if frame.height == 0:
        return pl.DataFrame(schema={ENTITY: pl.Utf8, "label": pl.Int8})
    snapshots = _parse_timestamps(frame["snapshot"], source.snapshot_column)
    frame = frame.with_columns(snapshots.alias("snapshot")).filter(pl.col("snapshot").dt.date() == day)
    values = set(frame["label"].unique().to_list())
    if not values <= {0, 1}:
        raise SystemExit(f"label column {source.label_column!r} must be 0/1, found {sorted(values, key=str)[:5]}")
    return frame.select(pl.col("key").cast(pl.Utf8).alias(ENTITY), pl.col("label").cast(pl.Int8)).unique(ENTITY)


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


def _auc_entry(version: str | None, labels: np.ndarray, scores: np.ndarray, **extra: Any) -> dict[str, Any]:
    metrics = classification_metrics(labels, scores) if len(labels) else {"auc": math.nan, "rows": 0}
    auc = metrics["auc"]
    return {
        "version": version,
        "auc": None if math.isnan(auc) else round(float(auc), 6),
        "rows": int(metrics["rows"]),
        "positive_rate": None if not len(labels) else round(float(np.mean(labels)), 6),
        **extra,
    }


def _score_with(model_name: str, version: str, frame: pl.DataFrame) -> tuple[np.ndarray | None, str | None]:
    """Scores of ``frame`` by a registered version on its own signature's columns, or the reason why not."""
    try:
        return predict.predict(tracking.model_uri(model_name, version), frame), None
    except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"


def decide_ab(champion: dict[str, Any], challenger: dict[str, Any], thresholds: Thresholds) -> str:
    """Promote the challenger arm when it beats the champion arm by ``ab_margin`` on enough labelled rows."""
    if min(champion["rows"], challenger["rows"]) < thresholds.min_rows:
        return INSUFFICIENT
    if champion["auc"] is None or challenger["auc"] is None:
        return INSUFFICIENT
    return PROMOTE if challenger["auc"] >= champion["auc"] + thresholds.ab_margin else KEEP


def rollback_rule(champion: dict[str, Any] | None, previous: dict[str, Any] | None, thresholds: Thresholds):
    """(recommended, reason): previous champion comparable on the same window and better by the margin."""
    if not champion or champion.get("auc") is None:
        return False, "no realised champion AUC yet (labels not available)"
    if not previous:
        return False, "no previous champion to roll back to"
    if not previous.get("comparable") or previous.get("auc") is None:
        return False, f"previous champion v{previous.get('version')} not comparable: {previous.get('reason')}"
    if champion["rows"] < thresholds.min_rows:
        return False, f"only {champion['rows']} labelled rows (< {thresholds.min_rows})"
    gap = previous["auc"] - champion["auc"]
    if gap > thresholds.rollback_margin:
        return True, (
            f"champion v{champion['version']} AUC {champion['auc']:.4f} is below previous champion "
            f"v{previous['version']} AUC {previous['auc']:.4f} by {gap:.4f} (> margin {thresholds.rollback_margin})"
        )
    return False, (
        f"champion v{champion['version']} AUC {champion['auc']:.4f} vs previous v{previous['version']} "
        f"{previous['auc']:.4f}: within the margin {thresholds.rollback_margin}"
    )


# --- the step -------------------------------------------------------------------------------------------


def run_monitor(
    model_name: str,
    score_date: date,
    predictions_root: str,
    out: str,
    *,
    warehouse_uri: str | None,
    labels: LabelSource | None = None,
    thresholds: Thresholds | None = None,
    ignore_features: tuple[str, ...] = (),
) -> dict[str, Any]:
    started = time.perf_counter()
    labels_source = labels or LabelSource()
    thresholds = thresholds or Thresholds()
    day_dir = io.join_uri(predictions_root, model_name, score_date.isoformat())
    predictions_uri, features_uri = io.join_uri(day_dir, PREDICTIONS_FILE), io.join_uri(day_dir, FEATURES_FILE)
    if not io.exists(predictions_uri):
        raise SystemExit(f"no predictions for {model_name} on {score_date}: {predictions_uri} does not exist")
    predictions = _read_parquet(predictions_uri).with_columns(pl.col(ENTITY).cast(pl.Utf8))
    for column in (ENTITY, "score"):
        if column not in predictions.columns:
            raise SystemExit(f"{predictions_uri}: missing column {column!r}")
    if "alias" not in predictions.columns:
        predictions = predictions.with_columns(pl.lit(tracking.CHAMPION).alias("alias"))
    features = _read_parquet(features_uri).with_columns(pl.col(ENTITY).cast(pl.Utf8)) if io.exists(
        features_uri) else None
    champion_arm = predictions.filter(pl.col("alias") == tracking.CHAMPION)
    log.info(
        "%s on %s: %s predictions (%s champion arm), %s feature rows",
        model_name, score_date, f"{predictions.height:,}", f"{champion_arm.height:,}",
        "no" if features is None else f"{features.height:,}",
    )

    client = MlflowClient()
    champion = tracking.version_by_alias(client, model_name, tracking.CHAMPION)
    if champion is None:
        raise SystemExit(f"{model_name} has no @{tracking.CHAMPION}: nothing is served, nothing to monitor")
    previous = tracking.version_by_alias(client, model_name, PREVIOUS_CHAMPION)

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
            prediction_psi = round(drift.psi_against(reference["score"], champion_arm["score"].to_numpy()), 6)
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
    label_frame = read_labels(warehouse_uri, labels_source, score_date) if warehouse_uri else None
    labels_available = label_frame is not None and label_frame.height > 0
    realised: dict[str, Any] = {"champion": None, "previous": None}
    ab = None
    if labels_available:
        realised = _realised(model_name, champion, previous, champion_arm, features, label_frame)
        ab = _ab_test(predictions, label_frame, thresholds)
    rollback, rollback_reason = rollback_rule(realised["champion"], realised["previous"], thresholds)
    if rollback:
        log.warning("ROLLBACK recommended: %s", rollback_reason)

    manifest = {
        "step": "monitor",
        "outputs": {"predictions": predictions_uri, "features": features_uri if features is not None else None},
        "model_name": model_name,
        "score_date": score_date.isoformat(),
        "rows": {
            "predictions": predictions.height,
            "champion_arm": champion_arm.height,
            "features": 0 if features is None else features.height,
            "labels": 0 if label_frame is None else label_frame.height,
        },
        "reference": {
            "version": str(reference_version.version) if reference else None,
            "run_id": reference_version.run_id if reference else None,
            "artifact": REFERENCE_ARTIFACT,
        },
        "thresholds": asdict(thresholds),
        "ignored_features": sorted(ignore_features),
        "drift_evaluated": drift_note is None,
        "drift_note": drift_note,
        **drift_report,
        "prediction_psi": prediction_psi,
        "drift_detected": drift_detected,
        "labels_source": labels_source.describe(),
        "labels_available": labels_available,
        "realised": realised,
        "rollback_recommended": rollback,
        "rollback_reason": rollback_reason,
        "ab": ab,
        "seconds": round(time.perf_counter() - started, 3),
    }
    io.write_manifest(out, manifest)
    return manifest


def _realised(model_name, champion, previous, champion_arm, features, label_frame) -> dict[str, Any]:
    """Champion AUC on its labelled predictions; previous champion's AUC on the same entities."""
    window = champion_arm.join(label_frame, on=ENTITY, how="inner")
    served = window["model_version"].cast(pl.Utf8).unique().to_list() if "model_version" in window.columns else []
    champion_version = str(champion.version)
    scores, source = window["score"].to_numpy(), "predictions"
    if served and served != [champion_version]:
        # The predictions were made by another version (the alias has moved since): rescore the window.
        if features is None:
            scores, source = None, f"predictions by v{served}, no features to rescore with v{champion_version}"
        else:
            rows = window.select(ENTITY, "label").join(features, on=ENTITY, how="inner")
            rescored, reason = _score_with(model_name, champion_version, rows)
            window = rows
            scores, source = (rescored, "rescored") if reason is None else (None, reason)
    champion_entry = (
        _auc_entry(champion_version, window["label"].to_numpy(), scores, source=source)
        if scores is not None else {"version": champion_version, "auc": None, "rows": 0, "source": source}
    )
    log.info("realised champion v%s AUC %s on %s rows", champion_version, champion_entry["auc"],
             champion_entry["rows"])

    previous_entry = None
    if previous is not None:
        previous_version = str(previous.version)
        if features is None:
            previous_entry = {"version": previous_version, "comparable": False, "auc": None, "rows": 0,
                              "reason": "no features.parquet for the score date"}
        else:
            rows = window.select(ENTITY, "label").join(features, on=ENTITY, how="inner")
            scores, reason = _score_with(model_name, previous_version, rows)
            if reason is not None:
                log.warning("previous champion v%s not comparable: %s", previous_version, reason)
                previous_entry = {"version": previous_version, "comparable": False, "auc": None, "rows": 0,
                                  "reason": reason}
            else:
                previous_entry = _auc_entry(previous_version, rows["label"].to_numpy(), scores, comparable=True)
                log.info("previous champion v%s AUC %s on the same %s rows", previous_version,
                         previous_entry["auc"], previous_entry["rows"])
    return {"champion": champion_entry, "previous": previous_entry}


def _ab_test(predictions: pl.DataFrame, label_frame: pl.DataFrame, thresholds: Thresholds) -> dict | None:
    arms = set(predictions["alias"].unique().to_list())
    if not {tracking.CHAMPION, tracking.CHALLENGER} <= arms:
        return None
    entries = {}
    for arm in (tracking.CHAMPION, tracking.CHALLENGER):
        rows = predictions.filter(pl.col("alias") == arm).join(label_frame, on=ENTITY, how="inner")
        versions = rows["model_version"].cast(pl.Utf8).unique().sort().to_list() if "model_version" in rows.columns else []
        entries[arm] = _auc_entry(",".join(versions) or None, rows["label"].to_numpy(), rows["score"].to_numpy())
    decision = decide_ab(entries[tracking.CHAMPION], entries[tracking.CHALLENGER], thresholds)
    log.info("A/B: champion AUC %s (%s rows), challenger AUC %s (%s rows): %s",
             entries["champion"]["auc"], entries["champion"]["rows"],
             entries["challenger"]["auc"], entries["challenger"]["rows"], decision)
    return {
        "champion_version": entries[tracking.CHAMPION]["version"],
        "challenger_version": entries[tracking.CHALLENGER]["version"],
        "champion_auc": entries[tracking.CHAMPION]["auc"],
        "challenger_auc": entries[tracking.CHALLENGER]["auc"],
        "rows": {arm: entry["rows"] for arm, entry in entries.items()},
        "margin": thresholds.ab_margin,
        "decision": decision,
    }


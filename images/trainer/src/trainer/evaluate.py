"""`trainer evaluate`: challenger and current champion, scored on the same test rows.

Each model is scored on the columns of its own signature (:mod:`trainer.predict`), so a champion trained
on an older feature set still competes when its columns are present. When they are not, or the model
cannot be loaded, or it predicts another task (or other classes), the champion is recorded as not
comparable, with the reason, and the step succeeds: the promotion decision downstream sees that and decides.

The metrics are the snapshot's task's (:func:`trainer.metrics.task_metrics`). The naive baseline (the train
split's class prior or mean, predicted for every test row) is scored on the same rows: a lower-is-better
promotion metric (log loss, RMSE) must beat it (:data:`mlcontract.rules.TASK_METRICS`).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import polars as pl
from mlcontract import registry, storage
from mlcontract.errors import StepInputError
from mlcontract.manifests import EvaluateManifest, ModelEvaluation
from mlcontract.names import CHAMPION, LABEL, MULTICLASS
from mlcontract.rules import task_metric
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from trainer import predict, tracking
from trainer.data import KEY_COLUMNS, Snapshot, load_snapshot
from trainer.metrics import THRESHOLD, baseline_output, predictions, task_metrics

log = logging.getLogger(__name__)

COMPARISON_ARTIFACT = "evaluation/comparison.json"


def run_evaluate(features_dir: str, model_name: str, challenger_version: str, out: str) -> EvaluateManifest:
    snapshot = load_snapshot(features_dir, splits=("test",))
    test = snapshot["test"]
    task = snapshot.task
    judged = task_metric(task).name
    client = MlflowClient()

    challenger = client.get_model_version(model_name, str(challenger_version))
    mismatch = _task_mismatch(snapshot, challenger)
    if mismatch:
        raise StepInputError(f"challenger {model_name} v{challenger.version} {mismatch}")
    try:
        challenger_output = predict.predict(registry.model_uri(model_name, challenger.version), test.frame)
    except predict.IncompatibleFeatures as error:
        raise StepInputError(
            f"challenger {model_name} v{challenger.version} cannot score this snapshot: {error}"
        ) from None
    scores = test.frame.select(*KEY_COLUMNS, LABEL).with_columns(
        _score_columns("challenger", snapshot, challenger_output)
    )
    challenger_entry = _scored(task, challenger, test.label, challenger_output)
    log.info("challenger v%s test-%s=%.4f", challenger.version, judged, challenger_entry.metrics[judged])

    champion_entry = None
    champion = registry.version_by_alias(client, model_name, CHAMPION)
    if champion is None:
        log.info("no @%s for %s yet: nothing to compare against", CHAMPION, model_name)
    else:
        try:
            mismatch = _task_mismatch(snapshot, champion)
            if mismatch:
                raise predict.IncompatibleFeatures(mismatch)
            champion_output = predict.predict(registry.model_uri(model_name, champion.version), test.frame)
        except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
            reason = f"{type(error).__name__}: {error}"
            log.warning("champion v%s is not comparable on this snapshot: %s", champion.version, reason)
            champion_entry = ModelEvaluation(
                version=str(champion.version), run_id=champion.run_id, comparable=False, reason=reason
            )
        else:
            scores = scores.with_columns(_score_columns("champion", snapshot, champion_output))
            champion_entry = _scored(task, champion, test.label, champion_output)
            log.info("champion v%s test-%s=%.4f", champion.version, judged, champion_entry.metrics[judged])

    baseline = task_metrics(
        task, test.label, baseline_output(task, snapshot.train_labels(), len(test), snapshot.num_class)
    )
    log.info("naive baseline test-%s=%.4f", judged, baseline[judged])

    scores_uri = storage.join_uri(out, "test_scores.parquet")
    storage.write_parquet(scores_uri, scores)

    manifest = EvaluateManifest(
        outputs={"test_scores": scores_uri},
        model_name=model_name,
        snapshot_hash=snapshot.snapshot_hash,
        test_rows=len(test),
        threshold=THRESHOLD,
        task=task,
        baseline=baseline,
        challenger=challenger_entry,
        champion=champion_entry,
    )
    _log_comparison(client, challenger.run_id, manifest)
    manifest.write(out)
    return manifest


def _task_mismatch(snapshot: Snapshot, version) -> str | None:
    """Why a registered version cannot be judged on this snapshot's task, or None when it can."""
    recorded = tracking.model_task(version)
    if recorded.task != snapshot.task:
        return f"is a {recorded.task} model, but this snapshot is {snapshot.task}"
    if snapshot.task == MULTICLASS and recorded.classes != snapshot.classes:
        return f"predicts the classes {recorded.classes}, but this snapshot has {snapshot.classes}"
    return None


def _score_columns(role: str, snapshot: Snapshot, output: np.ndarray) -> list[pl.Series]:
    """A model's ``score`` on the test rows (and, multiclass, its ``predicted_class``), as published."""
    score, predicted_class = predictions(snapshot.task, output, snapshot.classes)
    columns = [pl.Series(f"{role}_score", score, dtype=pl.Float64)]
    if snapshot.task == MULTICLASS:
        columns.append(pl.Series(f"{role}_predicted_class", predicted_class, dtype=pl.String))
    return columns


def _scored(task: str, version, labels: np.ndarray, output: np.ndarray) -> ModelEvaluation:
    """A registered version's metrics on the test rows."""
    return ModelEvaluation(
        version=str(version.version), run_id=version.run_id, comparable=True,
        metrics=task_metrics(task, labels, output),
    )


def _log_comparison(client: MlflowClient, run_id: str | None, manifest: EvaluateManifest) -> None:
    """Record the comparison on the challenger's run: eval_challenger_auc, eval_champion_auc, ..."""
    if not run_id:
        log.warning("challenger version has no run: comparison not logged to MLflow")
        return
    now_ms = int(time.time() * 1000)
    metrics = []
    roles = {
        "challenger": manifest.challenger.metrics,
        "champion": manifest.champion.metrics if manifest.champion else None,
        "baseline": manifest.baseline,
    }
    for role, values in roles.items():
        for key, value in (values or {}).items():
            if key != "threshold" and math.isfinite(value):
                metrics.append(Metric(f"eval_{role}_{key}", float(value), now_ms, 0))
    champion = manifest.champion
    tags = [
        RunTag("eval_snapshot_hash", manifest.snapshot_hash),
        RunTag("eval_champion_version", champion.version if champion else "none"),
        RunTag("eval_champion_comparable", str(bool(champion and champion.comparable)).lower()),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, manifest.model_dump(mode="json"), COMPARISON_ARTIFACT)

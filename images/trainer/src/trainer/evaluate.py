"""`trainer evaluate`: challenger and the pinned champion, scored on the same test rows.

The champion is the version the ``build-champion-features`` step pinned (``--champion-features``), scored on
the features rebuilt for it with its own training snapshot's spec and vocabulary on the same test entities
(:mod:`features.engineering.comparison`), so a new category value or an extra column never makes it "not
comparable". Only when that is truly impossible (its snapshot is gone, another task, a source column this
extract lacks, the version cannot be loaded) is it recorded as not comparable, with the reason; the step
succeeds and the promotion decision refuses promotion unless a Param allows it. Without
``--champion-features`` (older DAGs) the champion is ``@champion`` scored on the challenger's test split.

A metric that cannot be computed (NaN: the test rows hold one class only) is recorded as None with the
reason; the challenger is then not comparable and the decision rejects it.

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
from mlcontract.manifests import ChampionFeaturesManifest, EvaluateManifest, ModelEvaluation
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


def run_evaluate(
    features_dir: str, model_name: str, challenger_version: str, out: str, champion_features: str | None = None
) -> EvaluateManifest:
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
    _log_metric("challenger", challenger_entry, judged)

    if champion_features:
        champion_entry, champion_output = _pinned_champion(client, model_name, snapshot, champion_features)
    else:
        champion_entry, champion_output = _current_champion(client, model_name, snapshot)
    if champion_output is not None:
        scores = scores.with_columns(_score_columns("champion", snapshot, champion_output))
    if champion_entry is not None:
        _log_metric("champion", champion_entry, judged)

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


def _log_metric(role: str, entry: ModelEvaluation, judged: str) -> None:
    value = (entry.metrics or {}).get(judged)
    if value is None:
        log.warning("%s v%s: test-%s not available (%s)", role, entry.version, judged, entry.reason)
    else:
        log.info("%s v%s test-%s=%.4f", role, entry.version, judged, value)


def _not_comparable(version, reason: str, features: str | None = None) -> ModelEvaluation:
    log.warning("champion v%s is not comparable on this test set: %s", version.version, reason)
    return ModelEvaluation(version=str(version.version), run_id=version.run_id, comparable=False, reason=reason,
                           features=features)


def _pinned_champion(
    client: MlflowClient, model_name: str, snapshot: Snapshot, champion_features: str
) -> tuple[ModelEvaluation | None, np.ndarray | None]:
    """The pinned champion on its own features for the test rows; (None, None) when there is no champion."""
    pinned = ChampionFeaturesManifest.read(champion_features)
    if pinned.champion_version is None:
        log.info("no @%s for %s when this run started: nothing to compare against", CHAMPION, model_name)
        return None, None
    if pinned.snapshot_hash != snapshot.snapshot_hash:
        raise StepInputError(
            f"the champion features were built for snapshot {pinned.snapshot_hash}, not {snapshot.snapshot_hash}"
        )
    try:
        champion = client.get_model_version(model_name, pinned.champion_version)
    except MlflowException as error:
        return ModelEvaluation(version=pinned.champion_version, comparable=False,
                               reason=f"champion v{pinned.champion_version} cannot be read from the registry "
                               f"({error.error_code})"), None
    how = "same snapshot" if pinned.same_snapshot else "own snapshot"
    mismatch = _task_mismatch(snapshot, champion)
    if mismatch:
        return _not_comparable(champion, mismatch, how), None
    if not pinned.comparable:
        return _not_comparable(champion, pinned.reason or "its features could not be built", how), None
    test = snapshot["test"]
    keys = test.frame.select(pl.col(KEY_COLUMNS[0]).cast(pl.String), pl.col(KEY_COLUMNS[1]).cast(pl.Datetime("us")))
    own = storage.read_parquet(pinned.output("features")).with_columns(
        pl.col(KEY_COLUMNS[0]).cast(pl.String), pl.col(KEY_COLUMNS[1]).cast(pl.Datetime("us"))
    )
    frame = keys.join(own.unique(KEY_COLUMNS, keep="first"), on=list(KEY_COLUMNS), how="left", maintain_order="left")
    try:
        output = predict.predict(registry.model_uri(model_name, champion.version), frame)
    except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
        return _not_comparable(champion, f"{type(error).__name__}: {error}", how), None
    return _scored(snapshot.task, champion, test.label, output, features=how), output


def _current_champion(
    client: MlflowClient, model_name: str, snapshot: Snapshot
) -> tuple[ModelEvaluation | None, np.ndarray | None]:
    """``@champion`` scored on the challenger's test split (its signature's columns): older DAGs."""
    champion = registry.version_by_alias(client, model_name, CHAMPION)
    if champion is None:
        log.info("no @%s for %s yet: nothing to compare against", CHAMPION, model_name)
        return None, None
    try:
        mismatch = _task_mismatch(snapshot, champion)
        if mismatch:
            raise predict.IncompatibleFeatures(mismatch)
        output = predict.predict(registry.model_uri(model_name, champion.version), snapshot["test"].frame)
    except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
        return _not_comparable(champion, f"{type(error).__name__}: {error}", "test split"), None
    return _scored(snapshot.task, champion, snapshot["test"].label, output, features="test split"), output


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


def _scored(
    task: str, version, labels: np.ndarray, output: np.ndarray, features: str | None = None
) -> ModelEvaluation:
    """A registered version's metrics on the test rows; not comparable when its task's metric is NaN."""
    metrics = task_metrics(task, labels, output)
    judged = task_metric(task).name
    value = metrics.get(judged)
    if value is None or not math.isfinite(value):
        classes = np.unique(labels[~np.isnan(labels)]) if labels.size else np.array([])
        why = (f"the {len(labels)} test rows hold one class only ({classes.tolist()})" if len(classes) < 2
               else "it is not a finite number")
        return ModelEvaluation(version=str(version.version), run_id=version.run_id, comparable=False,
                               metrics=metrics, features=features,
                               reason=f"test {judged} cannot be computed: {why}")
    return ModelEvaluation(
        version=str(version.version), run_id=version.run_id, comparable=True, metrics=metrics, features=features,
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
            if key != "threshold" and value is not None and math.isfinite(value):
                metrics.append(Metric(f"eval_{role}_{key}", float(value), now_ms, 0))
    champion = manifest.champion
    tags = [
        RunTag("eval_snapshot_hash", manifest.snapshot_hash),
        RunTag("eval_champion_version", champion.version if champion else "none"),
        RunTag("eval_champion_comparable", str(bool(champion and champion.comparable)).lower()),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, manifest.model_dump(mode="json"), COMPARISON_ARTIFACT)

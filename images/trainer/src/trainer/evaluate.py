"""`trainer evaluate`: challenger and current champion, scored on the same test rows.

Each model is scored on the columns of its own signature (:mod:`trainer.predict`), so a champion trained
on an older feature set still competes when its columns are present. When they are not, or the model
cannot be loaded, the champion is recorded as not comparable, with the reason, and the step succeeds:
the promotion decision downstream sees that and decides.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import polars as pl
from mlcontract import registry, storage
from mlcontract.errors import StepInputError
from mlcontract.manifests import EvaluateManifest, ModelEvaluation
from mlcontract.names import CHAMPION, LABEL
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from trainer import predict
from trainer.data import KEY_COLUMNS, load_snapshot
from trainer.metrics import THRESHOLD, classification_metrics

log = logging.getLogger(__name__)

COMPARISON_ARTIFACT = "evaluation/comparison.json"


def run_evaluate(features_dir: str, model_name: str, challenger_version: str, out: str) -> EvaluateManifest:
    snapshot = load_snapshot(features_dir, splits=("test",))
    test = snapshot["test"]
    client = MlflowClient()

    challenger = client.get_model_version(model_name, str(challenger_version))
    try:
        challenger_scores = predict.predict(registry.model_uri(model_name, challenger.version), test.frame)
    except predict.IncompatibleFeatures as error:
        raise StepInputError(
            f"challenger {model_name} v{challenger.version} cannot score this snapshot: {error}"
        ) from None
    scores = test.frame.select(*KEY_COLUMNS, LABEL).with_columns(
        pl.Series("challenger_score", challenger_scores)
    )
    challenger_entry = _scored(challenger, test.label, challenger_scores)
    log.info("challenger v%s test-auc=%.4f", challenger.version, challenger_entry.metrics["auc"])

    champion_entry = None
    champion = registry.version_by_alias(client, model_name, CHAMPION)
    if champion is None:
        log.info("no @%s for %s yet: nothing to compare against", CHAMPION, model_name)
    else:
        try:
            champion_scores = predict.predict(registry.model_uri(model_name, champion.version), test.frame)
        except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
            reason = f"{type(error).__name__}: {error}"
            log.warning("champion v%s is not comparable on this snapshot: %s", champion.version, reason)
            champion_entry = ModelEvaluation(
                version=str(champion.version), run_id=champion.run_id, comparable=False, reason=reason
            )
        else:
            scores = scores.with_columns(pl.Series("champion_score", champion_scores))
            champion_entry = _scored(champion, test.label, champion_scores)
            log.info("champion v%s test-auc=%.4f", champion.version, champion_entry.metrics["auc"])

    scores_uri = storage.join_uri(out, "test_scores.parquet")
    storage.write_parquet(scores_uri, scores)

    manifest = EvaluateManifest(
        outputs={"test_scores": scores_uri},
        model_name=model_name,
        snapshot_hash=snapshot.snapshot_hash,
        test_rows=len(test),
        threshold=THRESHOLD,
        challenger=challenger_entry,
        champion=champion_entry,
    )
    _log_comparison(client, challenger.run_id, manifest)
    manifest.write(out)
    return manifest


def _scored(version, labels: np.ndarray, scores: np.ndarray) -> ModelEvaluation:
    """A registered version's metrics on the test rows."""
    return ModelEvaluation(
        version=str(version.version), run_id=version.run_id, comparable=True,
        metrics=classification_metrics(labels, scores),
    )


def _log_comparison(client: MlflowClient, run_id: str | None, manifest: EvaluateManifest) -> None:
    """Record the comparison on the challenger's run: eval_challenger_auc, eval_champion_auc, ..."""
    if not run_id:
        log.warning("challenger version has no run: comparison not logged to MLflow")
        return
    now_ms = int(time.time() * 1000)
    metrics = []
    for role, entry in (("challenger", manifest.challenger), ("champion", manifest.champion)):
        for key, value in ((entry.metrics if entry else None) or {}).items():
            if key != "threshold":
                metrics.append(Metric(f"eval_{role}_{key}", float(value), now_ms, 0))
    champion = manifest.champion
    tags = [
        RunTag("eval_snapshot_hash", manifest.snapshot_hash),
        RunTag("eval_champion_version", champion.version if champion else "none"),
        RunTag("eval_champion_comparable", str(bool(champion and champion.comparable)).lower()),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, manifest.model_dump(mode="json"), COMPARISON_ARTIFACT)

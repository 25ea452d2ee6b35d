"""`trainer evaluate`: challenger and current champion, scored on the same test rows.

Each model is scored on the columns of its own signature (:mod:`trainer.predict`), so a champion trained
on an older feature set still competes when its columns are present. When they are not, or the model
cannot be loaded, the champion is recorded as not comparable, with the reason, and the step succeeds:
the promotion decision downstream sees that and decides.
"""

from __future__ import annotations

import logging
import time
from io import BytesIO
from typing import Any

import polars as pl
from features import io
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from trainer import predict, tracking
from trainer.data import KEY_COLUMNS, LABEL, load_snapshot
from trainer.metrics import THRESHOLD, classification_metrics

log = logging.getLogger(__name__)

COMPARISON_ARTIFACT = "evaluation/comparison.json"


def run_evaluate(features_dir: str, model_name: str, challenger_version: str, out: str) -> dict[str, Any]:
    snapshot = load_snapshot(features_dir, splits=("test",))
    test = snapshot["test"]
    client = MlflowClient()

    challenger = client.get_model_version(model_name, str(challenger_version))
    try:
        challenger_scores = predict.predict(tracking.model_uri(model_name, challenger.version), test.frame)
    except predict.IncompatibleFeatures as error:
        raise SystemExit(f"challenger {model_name} v{challenger.version} cannot score this snapshot: {error}")
    scores = test.frame.select(*KEY_COLUMNS, LABEL).with_columns(
        pl.Series("challenger_score", challenger_scores)
    )
    challenger_entry = {
        "version": str(challenger.version),
        "run_id": challenger.run_id,
        "comparable": True,
        "metrics": classification_metrics(test.label, challenger_scores),
    }
    log.info("challenger v%s test-auc=%.4f", challenger.version, challenger_entry["metrics"]["auc"])

    champion_entry = None
    champion = tracking.version_by_alias(client, model_name, tracking.CHAMPION)
    if champion is None:
        log.info("no @%s for %s yet: nothing to compare against", tracking.CHAMPION, model_name)
    else:
        champion_entry = {"version": str(champion.version), "run_id": champion.run_id}
        try:
            champion_scores = predict.predict(tracking.model_uri(model_name, champion.version), test.frame)
        except (predict.IncompatibleFeatures, MlflowException, OSError, ValueError) as error:
            reason = f"{type(error).__name__}: {error}"
            log.warning("champion v%s is not comparable on this snapshot: %s", champion.version, reason)
            champion_entry.update(comparable=False, reason=reason, metrics=None)
        else:
            scores = scores.with_columns(pl.Series("champion_score", champion_scores))
            champion_entry.update(
                comparable=True, metrics=classification_metrics(test.label, champion_scores)
            )
            log.info("champion v%s test-auc=%.4f", champion.version, champion_entry["metrics"]["auc"])

    scores_uri = io.join_uri(out, "test_scores.parquet")
    buffer = BytesIO()
    scores.write_parquet(buffer)
    io.atomic_write_bytes(scores_uri, buffer.getvalue())

    manifest = {
        "step": "evaluate",
        "outputs": {"test_scores": scores_uri},
        "model_name": model_name,
        "snapshot_hash": snapshot.snapshot_hash,
        "test_rows": len(test),
        "threshold": THRESHOLD,
        "challenger": challenger_entry,
        "champion": champion_entry,
    }
    _log_comparison(client, challenger.run_id, manifest)
    io.write_manifest(out, manifest)
    return manifest


def _log_comparison(client: MlflowClient, run_id: str | None, manifest: dict[str, Any]) -> None:
    """Record the comparison on the challenger's run: eval_challenger_auc, eval_champion_auc, ..."""
    if not run_id:
        log.warning("challenger version has no run: comparison not logged to MLflow")
        return
    now_ms = int(time.time() * 1000)
    metrics = []
    for role in ("challenger", "champion"):
        entry = manifest[role] or {}
        for key, value in (entry.get("metrics") or {}).items():
            if key != "threshold":
                metrics.append(Metric(f"eval_{role}_{key}", float(value), now_ms, 0))
    champion = manifest["champion"]
    tags = [
        RunTag("eval_snapshot_hash", manifest["snapshot_hash"]),
        RunTag("eval_champion_version", champion["version"] if champion else "none"),
        RunTag("eval_champion_comparable", str(bool(champion and champion["comparable"])).lower()),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_dict(run_id, manifest, COMPARISON_ARTIFACT)

"""`trainer trial`: one hyperparameter set, fitted on train and scored on valid.

Trials do not touch MLflow. They run as many parallel mapped tasks; as MLflow runs they would only
clutter the experiment with models nobody registers, and nesting them under one parent run would need
a parent created before the fan-out. The manifests hold everything the pick-best step needs, and the
final fit logs the winning parameters.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mlcontract.manifests import TrialManifest
from mlcontract.names import BINARY

from trainer import model
from trainer.data import read_snapshot

log = logging.getLogger(__name__)


def run_trial(
    features_dir: str,
    params: dict[str, Any],
    seed: int,
    out: str,
    device: str = "cpu",
    log_every: int = 100,
    label: str = "trial",
    trial_index: int | None = None,
    memory_budget: int | None = None,
) -> TrialManifest:
    """``memory_budget``: bytes the splits may take in memory (:func:`trainer.model.data_plan`); bigger ones
    are trained on from their parquet row groups in xgboost's external memory."""
    started = time.perf_counter()
    snapshot = read_snapshot(features_dir)
    plan = model.data_plan(snapshot, memory_budget)
    result = model.fit_snapshot(snapshot, params, seed, plan=plan, device=device, log_every=log_every, label=label)
    manifest = TrialManifest(
        params=result.params,
        seed=seed,
        trial_index=trial_index,
        task=snapshot.task,
        valid_metric=result.valid_metric,
        metric=result.metric,
        higher_is_better=model.objective(snapshot.task).higher_is_better,
        valid_auc=result.valid_metric if snapshot.task == BINARY else None,
        best_iteration=result.best_iteration,
        rounds=result.rounds,
        device=device,
        snapshot_hash=snapshot.snapshot_hash,
        rows={name: snapshot.split_rows(name) for name in ("train", "valid")},
        fit_seconds=round(result.seconds, 3),
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out)
    return manifest

"""`trainer score`: a day's predictions from the registered model behind an alias (never "latest").

Each row gets ``score`` (binary P(class 1), multiclass P(predicted class), regression the predicted value)
and ``predicted_class`` (binary "0"/"1" at the threshold, multiclass the user's class label, regression
null), for the task recorded with the model version (:func:`trainer.tracking.model_task`).

The alias (``champion``) is resolved to a concrete version first and that version is loaded
(``models:/NAME/VERSION``) and recorded on every row, so a prediction always says which model made it, even
if the alias moves while the step runs. ``--expect-version`` makes that a hard check: the DAG built the
features for the version it resolved, and scoring them with another version is refused.

A/B test (deploy mode ``ab_test``): with ``--ab-challenger-share`` > 0 each entity goes to ``challenger`` when
a stable hash of its id (salted with the model name) falls below the share, so an entity stays in the same
arm every day and as the share grows only new entities move over. The challenger arm is scored by the
version the A/B deployment names (``--challenger-version``), else by the version ``@challenger`` points at.
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import polars as pl
from mlcontract import registry, storage
from mlcontract.errors import StepInputError
from mlcontract.manifests import ScoreManifest, ScoringBuildManifest
from mlcontract.names import CHALLENGER, CHAMPION, ENTITY, PREDICTIONS_FILE
from mlflow import MlflowClient

from trainer import predict, tracking
from trainer.errors import ModelVersionNotFound
from trainer.metrics import predictions as published

log = logging.getLogger(__name__)

_HASH_SPACE = float(1 << 64)


def ab_fraction(entity_id: str, salt: str) -> float:
    """A stable number in [0, 1) per (salt, entity): the same on every day, machine and Python version."""
    digest = hashlib.blake2b(f"{salt}\x00{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


def assign_arms(entity_ids: list[str] | pl.Series, share: float, salt: str) -> np.ndarray:
    """True where the entity goes to the challenger arm (``share`` of the entities, stably)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"--ab-challenger-share must be within [0, 1], got {share}")
    if share == 0.0:
        return np.zeros(len(entity_ids), dtype=bool)
    fractions = (ab_fraction(str(e), salt) for e in entity_ids)
    return np.fromiter((f < share for f in fractions), dtype=bool, count=len(entity_ids))


def _resolve(client: MlflowClient, model_name: str, alias: str):
    version = registry.version_by_alias(client, model_name, alias)
    if version is None:
        raise ModelVersionNotFound(f"{model_name} has no @{alias} model version: nothing to score with")
    return version


def run_score(
    features_dir: str,
    model_name: str,
    out: str,
    *,
    alias: str = CHAMPION,
    ab_challenger_share: float = 0.0,
    expect_version: str | None = None,
    challenger_version: str | None = None,
    dag_run_id: str | None = None,
) -> ScoreManifest:
    started = time.perf_counter()
    built = ScoringBuildManifest.read(features_dir)
    features_uri = built.output("features")
    features = storage.read_parquet(features_uri)
    score_date = built.score_date
    dag_run_id = dag_run_id or "manual"

    client = MlflowClient()
    main = _resolve(client, model_name, alias)
    if expect_version and str(main.version) != str(expect_version):
        raise StepInputError(
            f"@{alias} of {model_name} is now version {main.version}, but the features were built for "
            f"version {expect_version}: the alias moved during this run; rerun the DAG"
        )
    arms = {alias: main}
    to_challenger = assign_arms(features[ENTITY], ab_challenger_share, salt=model_name)
    if to_challenger.any():
        arms[CHALLENGER] = (
            client.get_model_version(model_name, str(challenger_version)) if challenger_version
            else _resolve(client, model_name, CHALLENGER)
        )

    task = tracking.model_task(main)
    for arm, version in arms.items():
        arm_task = tracking.model_task(version)
        if arm_task != task:
            raise StepInputError(
                f"the @{arm} arm ({model_name} v{version.version}) predicts {arm_task}, the @{alias} arm "
                f"{task}: both arms of an A/B test must predict the same task and classes"
            )
    scores = np.full(features.height, np.nan)
    classes = np.full(features.height, None, dtype=object)
    row_alias = np.where(to_challenger, CHALLENGER, alias)
    row_version = np.empty(features.height, dtype=object)
    for arm, version in arms.items():
        rows = row_alias == arm
        uri = registry.model_uri(model_name, version.version)
        try:
            output = predict.predict(uri, features.filter(pl.Series(rows)))
        except predict.IncompatibleFeatures as error:
            raise predict.IncompatibleFeatures(f"@{arm} ({uri}) cannot score these features: {error}") from None
        scores[rows], predicted_class = published(task.task, output, task.classes)
        classes[rows] = predicted_class
        row_version[rows] = str(version.version)
        log.info("scored %s entities with @%s (%s)", f"{int(rows.sum()):,}", arm, uri)

    predictions = pl.DataFrame(
        {
            ENTITY: features[ENTITY].cast(pl.String),
            "score_date": pl.Series([score_date] * features.height).str.to_date("%Y-%m-%d"),
            "score": pl.Series(scores, dtype=pl.Float64),
            "predicted_class": pl.Series(classes.tolist(), dtype=pl.String),
            "model_name": [model_name] * features.height,
            "model_version": pl.Series(row_version.tolist(), dtype=pl.String),
            "alias": pl.Series(row_alias.tolist(), dtype=pl.String),
            "dag_run_id": [dag_run_id] * features.height,
        },
        schema_overrides={"model_name": pl.String, "dag_run_id": pl.String},
    )
    predictions_uri = storage.join_uri(out, PREDICTIONS_FILE)
    storage.write_parquet(predictions_uri, predictions)

    valid = predictions["score"].drop_nans().drop_nulls()
    manifest = ScoreManifest(
        outputs={"predictions": predictions_uri, "features": features_uri},
        rows={"predictions": predictions.height, **{a: int((row_alias == a).sum()) for a in arms}},
        model_name=model_name,
        alias=alias,
        model_version=str(main.version),
        model_run_id=main.run_id,
        task=task.task,
        classes=task.classes,
        versions={arm: str(version.version) for arm, version in arms.items()},
        ab_challenger_share=ab_challenger_share,
        score_date=score_date,
        dag_run_id=dag_run_id,
        reference_snapshot_uri=built.reference_snapshot_uri,
        feature_columns=built.feature_columns,
        score_mean=float(valid.mean()) if valid.len() else None,
        score_std=float(valid.std()) if valid.len() > 1 else None,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out)
    log.info("score done: %s predictions for %s, mean %.4f", f"{predictions.height:,}", score_date,
             manifest.score_mean or float("nan"))
    return manifest


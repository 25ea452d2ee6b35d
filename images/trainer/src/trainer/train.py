"""`trainer train`: the final fit, logged to MLflow and registered as the `challenger`.

Idempotent per pipeline run: the version is tagged ``pipeline_run_key = {dag_id}/{run_id}``; when the
task is retried and a version with that key exists, nothing is refitted or registered again: the alias
is re-set and the manifest stored with that version's run is written again.

Idempotent per fit too: the version is tagged ``fit_key``, a hash of the snapshot, the parameters, the seed,
the device and the code version. A whole run re-triggered on the same data finds the version an identical
fit registered and reuses it (``TrainManifest.reused_from`` names the run that registered it) instead of
registering an identical second one.

Training data bigger than memory: when the train and valid splits would take more than the memory budget
(:func:`trainer.model.data_plan`), the fit runs in xgboost's external memory and nothing after it holds a
split either: valid and test are scored batch by batch (the model's outputs and labels, one value per row, are
kept for the metrics and plots), the drift reference's cut points come from a seeded sample of the train rows
and its shares from all of them, and the input example is the train split's first rows. The MLflow run
records which (params ``external_memory`` and ``memory_budget_bytes``).

A judged test metric that cannot be computed (one class in the test rows) leaves ``challenger`` where it
was; the version is still registered, so evaluate and the decision record the rejection against it. A
SIGTERM while the step runs ends its MLflow run as FAILED (:func:`trainer.tracking.runs_fail_when_terminated`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import polars as pl
from mlcontract import registry, storage
from mlcontract.env import StepEnvironment
from mlcontract.manifests import GateManifest, TrainManifest
from mlcontract.names import BINARY, CHALLENGER, MULTICLASS, REGRESSION
from mlcontract.rules import task_metric
from mlflow import MlflowClient
from mlflow.models import infer_signature

from trainer import drift, model, plots, tracking
from trainer.data import (
    Snapshot,
    load_snapshot,
    read_snapshot,
    split_batches,
    split_frames,
    split_head,
    split_sample,
)
from trainer.metrics import THRESHOLD, predictions, task_metrics
from trainer.predict import model_frame

log = logging.getLogger(__name__)

MANIFEST_ARTIFACT = "trainer/manifest.json"
REFERENCE_ARTIFACT = "reference/reference.json"  # what monitoring compares serving data with (trainer.drift)
INPUT_EXAMPLE_ROWS = 5
# Train rows sampled for the drift reference's cut points when the splits are not held (external memory):
# deciles of 100,000 rows are within about 0.2 % of the rows' own, and the sample holds at most an eighth of
# the memory budget (float64 values of every feature).
REFERENCE_SAMPLE_ROWS = 100_000
MIN_REFERENCE_SAMPLE_ROWS = 1_000


def run_train(
    features_dir: str,
    params: dict[str, Any],
    seed: int,
    model_name: str,
    out: str,
    validations: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    log_every: int = 100,
    env: StepEnvironment | None = None,
    memory_budget: int | None = None,
) -> TrainManifest:
    """``memory_budget``: bytes the train and valid splits may take in memory (default
    :func:`trainer.model.default_memory_budget`); bigger ones are fitted and scored batch by batch."""
    env = env or StepEnvironment()
    with tracking.runs_fail_when_terminated():
        return _train(features_dir, params, seed, model_name, out, validations, device, log_every, env,
                      memory_budget)


def fit_key(
    snapshot_hash: str, params: dict[str, Any], seed: int, device: str, code_version: str,
    external_memory: bool = False,
) -> str:
    """What makes two final fits identical: the same snapshot, parameters, seed, device and code, and external
    memory or not (its quantile sketch is made per batch: slightly other trees). In-memory keys are as before."""
    key = {"snapshot": snapshot_hash, "params": params, "seed": seed, "device": device, "code": code_version}
    return storage.hash_json({**key, "external_memory": True} if external_memory else key)


@dataclass(frozen=True)
class Fitted:
    """The final fit and what the rest of the step needs from the splits, however they were read."""

    result: model.FitResult
    labels: dict[str, np.ndarray]  # valid and test
    outputs: dict[str, np.ndarray]  # the model's output on valid and test
    feature_entries: dict[str, dict[str, Any]]  # the drift reference's per-feature entries (train split)
    example: pl.DataFrame  # the train split's first rows, feature columns
    rows: dict[str, int]  # per split


def fit_in_memory(
    features_dir: str, params: dict[str, Any], seed: int, plan: model.DataPlan, **options: Any
) -> Fitted:
    """Every split loaded whole: the fit, the outputs, the reference over all train values."""
    snapshot = load_snapshot(features_dir)
    columns = snapshot.feature_columns
    train, valid, test = snapshot["train"], snapshot["valid"], snapshot["test"]
    result = model.fit_snapshot(snapshot, params, seed, plan=plan, **options)
    return Fitted(
        result=result,
        labels={s.name: s.label for s in (valid, test)},
        outputs={s.name: model.predict_proba(result.booster, s.features(columns), columns) for s in (valid, test)},
        feature_entries={c: drift.distribution(train.frame[c].to_numpy()) for c in columns},
        example=train.frame.head(INPUT_EXAMPLE_ROWS),
        rows={s.name: len(s) for s in (train, valid, test)},
    )


def fit_streamed(
    snapshot: Snapshot, params: dict[str, Any], seed: int, plan: model.DataPlan,
    batch_rows: int = model.EXTERNAL_BATCH_ROWS, **options: Any,
) -> Fitted:
    """No split held: the fit in external memory, valid and test scored batch by batch, the reference's cut
    points from a seeded sample of train rows (an eighth of the budget at most) and its shares from all."""
    columns = snapshot.feature_columns
    result = model.fit_snapshot(snapshot, params, seed, plan=plan, batch_rows=batch_rows, **options)
    labels, outputs = {}, {}
    for name in ("valid", "test"):
        batches = [(y, model.predict_proba(result.booster, x, columns))
                   for x, y in split_batches(snapshot, name, batch_rows)]
        labels[name] = np.concatenate([y for y, _ in batches])
        outputs[name] = np.concatenate([output for _, output in batches])
    sample_rows = max(MIN_REFERENCE_SAMPLE_ROWS,
                      min(REFERENCE_SAMPLE_ROWS, plan.budget_bytes // 8 // (8 * len(columns))))
    sample = split_sample(snapshot, "train", sample_rows, seed, columns, batch_rows)
    entries = drift.streamed_distributions(
        {c: sample[c].to_numpy() for c in columns},
        ({c: frame[c].to_numpy() for c in columns}
         for frame in split_frames(snapshot, "train", batch_rows, columns)),
    )
    log.info("drift reference: cut points from %d sampled train rows, shares over all %d", sample.height,
             snapshot.split_rows("train"))
    return Fitted(
        result=result, labels=labels, outputs=outputs, feature_entries=entries,
        example=split_head(snapshot, "train", INPUT_EXAMPLE_ROWS),
        rows={name: snapshot.split_rows(name) for name in ("train", "valid", "test")},
    )


def _train(
    features_dir: str, params: dict[str, Any], seed: int, model_name: str, out: str,
    validations: list[str] | tuple[str, ...], device: str, log_every: int, env: StepEnvironment,
    memory_budget: int | None = None,
) -> TrainManifest:
    tracking.use_experiment()
    client = MlflowClient()

    run_key = env.pipeline_run_key
    if run_key is None:
        log.warning("PIPELINE_DAG_ID/PIPELINE_RUN_ID not set: reruns cannot reuse the registered version")
    else:
        existing = tracking.find_version_by_run_key(client, model_name, run_key)
        if existing is not None:
            return _reuse(client, existing, out)
    snapshot = read_snapshot(features_dir)
    plan = model.data_plan(snapshot, memory_budget)
    lineage = tracking.lineage_tags(env)
    identity = fit_key(snapshot.snapshot_hash, params, seed, device, lineage["code_version"], plan.external)
    identical = tracking.find_version_by_fit_key(client, model_name, identity)
    if identical is not None:
        return _reuse(client, identical, out, identical_fit=True)

    started = time.perf_counter()
    task, classes = snapshot.task, snapshot.classes
    recorded_task = tracking.ModelTask(task, classes)  # recorded with the version: scoring and monitoring read it
    columns = snapshot.feature_columns
    options = {"device": device, "log_every": log_every, "label": "final fit"}
    fitted = (fit_streamed(snapshot, params, seed, plan, **options) if plan.external
              else fit_in_memory(features_dir, params, seed, plan, **options))
    result, outputs = fitted.result, fitted.outputs
    metrics: dict[str, float] = {"best_iteration": result.best_iteration, "rounds": result.rounds}
    for name in ("valid", "test"):
        for key, value in task_metrics(task, fitted.labels[name], outputs[name]).items():
            if key != "threshold":
                metrics[f"{name}_{key}"] = value
    judged = task_metric(task).name
    log.info("%s: valid-%s=%.4f test-%s=%.4f", task, judged, metrics[f"valid_{judged}"], judged,
             metrics[f"test_{judged}"])
    test_scores, test_classes = predictions(task, outputs["test"], classes)
    reference = drift.reference_of(
        fitted.feature_entries, test_scores, task=task,
        predicted_classes=test_classes if task == MULTICLASS else None, classes=classes,
    )

    plots_uri = storage.join_uri(out, "plots")
    figures = _figures(task, result, {name: (fitted.labels[name], outputs[name]) for name in ("valid", "test")},
                       classes)
    for name, png in figures.items():
        storage.write_bytes(storage.join_uri(plots_uri, name), png)

    tags = {
        **lineage, **tracking.data_lineage_tags(snapshot.build), "seed": str(seed), **recorded_task.tags(),
        tracking.FIT_KEY_TAG: identity,
    }
    computable = math.isfinite(metrics[f"test_{judged}"])
    if not computable:
        log.warning("test-%s cannot be computed (one class in the test rows?): the version is registered for the "
                    "record, @%s is left where it was", judged, CHALLENGER)
    logged_params = {
        **result.params,
        "seed": seed,
        "device": device,
        "task": task,
        **({"num_class": snapshot.num_class} if task == MULTICLASS else {}),
        "objective": model.objective(task).objective,
        "tree_method": "hist",
        "n_features": len(columns),
        "snapshot_hash": snapshot.snapshot_hash,
        **{f"rows_{name}": rows for name, rows in fitted.rows.items()},
        "external_memory": plan.external,  # how the fit read its data, and the budget that decided it
        "memory_budget_bytes": plan.budget_bytes,
    }
    example = model_frame(fitted.example, columns)
    signature = infer_signature(example, model.predict_proba(result.booster, example.to_numpy(), columns))

    run_name = f"train {run_key}" if run_key else f"train {snapshot.snapshot_hash[:12]}"
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(logged_params)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_metric("fit_seconds", result.seconds)
        mlflow.log_dict(reference, REFERENCE_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            for name, png in figures.items():
                (Path(tmp) / name).write_bytes(png)
            mlflow.log_artifacts(tmp, "plots")
        for name, directory in _validation_dirs(validations).items():
            _log_validation(name, directory)
        info = mlflow.xgboost.log_model(
            result.booster,
            name="model",
            signature=signature,
            input_example=example,
            model_format="ubj",
            pip_requirements=_pip_requirements(),
            tags=tags,
        )
        # Everything but the version number is stored with the run *before* registering, so a retry
        # that finds the registered version can always rebuild the same manifest (see _reuse).
        manifest = TrainManifest(
            model_name=model_name,
            logged_model_uri=info.model_uri,
            mlflow_run_id=run.info.run_id,
            task=task,
            classes=classes,
            metrics=metrics,
            threshold=THRESHOLD,
            params=result.params,
            seed=seed,
            device=device,
            best_iteration=result.best_iteration,
            feature_columns=columns,
            snapshot_hash=snapshot.snapshot_hash,
            pipeline_run_key=run_key,
            plots_uri=plots_uri,
            fit_seconds=round(result.seconds, 3),
            seconds=round(time.perf_counter() - started, 3),
            fit_key=identity,
            challenger_alias_set=computable,
        )
        mlflow.log_dict(manifest.model_dump(mode="json"), MANIFEST_ARTIFACT)
        version = mlflow.register_model(info.model_uri, model_name, tags=tags)
        if computable:
            client.set_registered_model_alias(model_name, CHALLENGER, str(version.version))
        log.info("registered %s version %s%s", model_name, version.version,
                 f" as @{CHALLENGER}" if computable else f" (not @{CHALLENGER}: its test-{judged} is not computable)")
    manifest = _with_version(manifest, model_name, version.version)
    manifest.write(out)
    return manifest


def _reuse(client: MlflowClient, version, out: str, identical_fit: bool = False) -> TrainManifest:
    """A version already registered by this run (a task retry) or by an identical fit (a re-trigger of the same
    data): re-point the alias, rewrite the manifest stored with its run; nothing is fitted or registered."""
    registered_by = version.tags.get(tracking.RUN_KEY_TAG)
    if identical_fit:
        log.info("%s version %s, registered by %s, is an identical fit (same snapshot, parameters, seed, device "
                 "and code): reusing it instead of registering an identical version", version.name,
                 version.version, registered_by)
    else:
        log.info("%s version %s already registered for %s: reusing it, not training again", version.name,
                 version.version, registered_by)
    stored_uri = f"runs:/{version.run_id}/{MANIFEST_ARTIFACT}"
    stored = TrainManifest.parse(mlflow.artifacts.load_dict(stored_uri), stored_uri)
    if stored.challenger_alias_set:
        client.set_registered_model_alias(version.name, CHALLENGER, str(version.version))
    manifest = _with_version(stored, version.name, version.version)
    if identical_fit:
        manifest = manifest.model_copy(update={"reused_from": registered_by or f"v{version.version}"})
    manifest.write(out)
    return manifest


def _with_version(manifest: TrainManifest, model_name: str, version: str | int) -> TrainManifest:
    uri = registry.model_uri(model_name, version)
    return manifest.model_copy(
        update={"outputs": {"model": uri, "plots": manifest.plots_uri}, "model_version": str(version), "model_uri": uri}
    )


def _figures(
    task: str, result: model.FitResult, curves: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str] | None
) -> dict[str, bytes]:
    """The task's diagnostic figures; ``curves``: split -> (labels, model output)."""
    gain = result.booster.get_score(importance_type="total_gain")
    y_test, output_test = curves["test"]
    figures = {"feature_importance.png": plots.feature_importance(gain)}
    if task == BINARY:
        figures |= {
            "roc.png": plots.roc_curve(curves),
            "pr.png": plots.pr_curve(curves),
            "confusion_matrix.png": plots.confusion_matrix(y_test, output_test, THRESHOLD, "test"),
        }
    elif task == MULTICLASS:
        figures["confusion_matrix.png"] = plots.class_confusion(
            y_test, output_test.argmax(axis=1), classes or [], "Confusion matrix (test)"
        )
    elif task == REGRESSION:
        figures |= {
            "predicted_vs_actual.png": plots.predicted_vs_actual(curves),
            "residuals.png": plots.residuals(y_test, output_test, "test"),
        }
    return figures


def _validation_dirs(validations: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Artifact folder name per validation step dir: its last path part, made unique."""
    named: dict[str, str] = {}
    for directory in validations:
        base = directory.rstrip("/").rsplit("/", 1)[-1] or "validation"
        name, n = base, 1
        while name in named:
            n += 1
            name = f"{base}_{n}"
        named[name] = directory
    return named


def _log_validation(name: str, directory: str) -> None:
    """Copy a GX validation step's outputs (manifest, results JSON) into the run as artifacts."""
    gate = GateManifest.read(directory)  # fails loudly if the gate did not finish
    mlflow.set_tag(f"validation.{name}.success", str(gate.success).lower())
    fs, root = storage.filesystem(directory)
    with tempfile.TemporaryDirectory() as tmp:
        for path in fs.find(root):
            relative = Path(path).relative_to(Path(root))
            target = Path(tmp) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        mlflow.log_artifacts(tmp, f"validations/{name}")
    log.info("logged validation results of %s", name)


def _pip_requirements() -> list[str]:
    """Pinned serving requirements (explicit: MLflow's inference would re-import the model, ~6 s)."""
    return [f"{package}=={metadata.version(package)}" for package in ("xgboost", "numpy", "pandas")]

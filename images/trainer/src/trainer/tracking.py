"""MLflow: the experiment, lineage tags, and the registry lookups the trainer needs beyond the contract's.

The tracking server comes from ``MLFLOW_TRACKING_URI`` (read by MLflow itself). That URI may carry a
password, so it is never logged, tagged or written to a manifest; neither is any other env value
except the named, non-secret lineage variables of :class:`~mlcontract.env.StepEnvironment`.
Alias lookups are :func:`mlcontract.registry.version_by_alias`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata

import mlflow
from mlcontract import storage
from mlcontract.env import StepEnvironment
from mlcontract.errors import ManifestError, StepInputError
from mlcontract.manifests import BuildManifest, ExtractManifest
from mlcontract.names import BINARY, DEFAULT_MODEL_NAME, MULTICLASS, TASKS
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = DEFAULT_MODEL_NAME
RUN_KEY_TAG = "pipeline_run_key"
FIT_KEY_TAG = "fit_key"  # snapshot, params, seed, device and code of a final fit: identical fits share it
TASK_TAG, CLASSES_TAG = "task", "classes"  # on the run and the model version: what the model predicts
MAX_TAG_LENGTH = 5000  # below MLflow's limit on tag values


@dataclass(frozen=True)
class ModelTask:
    """What a registered model predicts: its task and, for multiclass, the user's labels by class index."""

    task: str = BINARY
    classes: list[str] | None = None

    def __str__(self) -> str:
        return f"{self.task} (classes {', '.join(self.classes)})" if self.classes else self.task

    def tags(self) -> dict[str, str]:
        tags = {TASK_TAG: self.task}
        if self.classes is not None:
            classes = json.dumps(self.classes)
            if len(classes) > MAX_TAG_LENGTH:
                raise StepInputError(
                    f"{len(self.classes)} classes take {len(classes)} characters, more than a model version "
                    f"tag holds ({MAX_TAG_LENGTH}): too many classes, or class labels too long"
                )
            tags[CLASSES_TAG] = classes
        return tags


def model_task(version: ModelVersion) -> ModelTask:
    """The task recorded with a registered version (binary for versions registered before tasks existed)."""
    tags = version.tags or {}
    task = tags.get(TASK_TAG, BINARY)
    if task not in TASKS:
        raise StepInputError(f"{version.name} v{version.version} has an unknown task tag {task!r}")
    classes = json.loads(tags[CLASSES_TAG]) if CLASSES_TAG in tags else None
    if task == MULTICLASS and not classes:
        raise StepInputError(f"{version.name} v{version.version} is multiclass but records no classes")
    return ModelTask(task, classes)


def lineage_tags(env: StepEnvironment) -> dict[str, str]:
    """Where a model came from: the pod's Airflow ids, code version and image (set by the pod factory)."""
    tags = {
        "airflow_dag_id": env.pipeline_dag_id,
        "airflow_run_id": env.pipeline_run_id,
        "airflow_task_id": env.pipeline_task_id,
        RUN_KEY_TAG: env.pipeline_run_key,
        "code_version": env.code_version or _package_version(),
        "image_ref": env.image_ref,
    }
    return {k: v for k, v in tags.items() if v}


def _package_version() -> str:
    try:
        return f"trainer=={metadata.version('trainer')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def data_lineage_tags(build: BuildManifest) -> dict[str, str]:
    """Snapshot hash, feature set and the warehouse source (tables/queries) the snapshot was built from.

    The build manifest copies the extract's ``source`` when it has it; otherwise the source is read from
    the extract step's manifest (``extract``). An unreadable extract manifest leaves the source untagged.
    """
    tags = {
        "snapshot_hash": build.snapshot_hash,
        "snapshot_uri": build.snapshot_uri,
        "feature_columns_hash": storage.hash_json(list(build.feature_columns)),
        "extract_content_hash": build.extract_content_hash,
    }
    source = build.source
    if source is None:
        try:
            source = ExtractManifest.read(build.extract).source
        except (ManifestError, OSError) as error:
            log.warning("extract manifest not readable (%s); source lineage not tagged", error)
    if source is not None:
        tags["source"] = _truncate(json.dumps(source, sort_keys=True))
    return {k: str(v) for k, v in tags.items() if v}


def _truncate(value: str) -> str:
    return value if len(value) <= MAX_TAG_LENGTH else value[: MAX_TAG_LENGTH - 3] + "..."


def use_experiment(name: str | None = None) -> str:
    """Select the experiment (``MLFLOW_EXPERIMENT_NAME``, default customer-churn), creating it if needed.

    A new experiment stores artifacts under ``MLFLOW_ARTIFACT_LOCATION`` when that is set (the local
    embedded default); otherwise the tracking server decides.
    """
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=os.environ.get("MLFLOW_ARTIFACT_LOCATION"))
        except MlflowException:
            if client.get_experiment_by_name(name) is None:  # not a lost creation race: a real error
                raise
    return mlflow.set_experiment(name).experiment_id


def find_version_by_run_key(client: MlflowClient, model_name: str, run_key: str) -> ModelVersion | None:
    """The version of ``model_name`` a pipeline run already registered, if any (lowest if several)."""
    quoted_name, quoted_key = model_name.replace("'", "\\'"), run_key.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted_name}' and tags.{RUN_KEY_TAG} = '{quoted_key}'")
    # Re-check in Python: the filter grammar differs a little between registry backends.
    matches = [v for v in found if v.name == model_name and v.tags.get(RUN_KEY_TAG) == run_key]
    return min(matches, key=lambda v: int(v.version)) if matches else None


def find_version_by_fit_key(client: MlflowClient, model_name: str, fit_key: str) -> ModelVersion | None:
    """A version of ``model_name`` fitted identically (same snapshot, params, seed, device, code), if any."""
    quoted_name = model_name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted_name}' and tags.{FIT_KEY_TAG} = '{fit_key}'")
    matches = [v for v in found if v.name == model_name and (v.tags or {}).get(FIT_KEY_TAG) == fit_key]
    return min(matches, key=lambda v: int(v.version)) if matches else None


class StepTerminated(SystemExit):
    """SIGTERM reached the step (pod deleted, task killed or timed out): unwinds it, exit code 128 + 15."""


@contextmanager
def runs_fail_when_terminated() -> Iterator[None]:
    """While inside, SIGTERM ends the step's MLflow run as FAILED instead of leaving it RUNNING forever.

    Kubernetes deletes a killed task's pod with SIGTERM (Airflow's ``on_kill``; the local runtime terminates
    the process): the handler raises :class:`StepTerminated`, which unwinds ``with mlflow.start_run()`` (MLflow
    ends a run left by an exception as FAILED); a run still active after that is ended FAILED here.
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def terminate(signum: int, _frame: object) -> None:
        raise StepTerminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except StepTerminated:
        log.error("terminated (SIGTERM): the MLflow run is ended as FAILED")
        if mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)

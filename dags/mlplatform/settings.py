"""Pipeline settings, read from the environment.

The same DAG code runs on a laptop (``PIPELINE_RUNTIME=local``, everything embedded under ``.local/``) and on
a cluster (``PIPELINE_RUNTIME=kubernetes``, values injected by the Helm chart). Reading the environment is
cheap and does no I/O, so it is safe at DAG parse time.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGEST_PATTERN = re.compile(r"^sha256:[a-f0-9]{64}$")
RUNTIMES = ("local", "kubernetes")


def local_home() -> Path:
    """Where the embedded defaults live (git-ignored; ``make clean`` removes it)."""
    return Path(os.environ.get("MLPLATFORM_HOME", REPO_ROOT / ".local")).resolve()


def image_ref(repository_and_tag: str, digest: str) -> str:
    """A digest, when given, pins the image and overrides the tag."""
    if not digest:
        return repository_and_tag
    if not DIGEST_PATTERN.match(digest):
        raise ValueError(f"image digest {digest!r} is not of the form sha256:<64 hex characters>")
    repository = repository_and_tag.rsplit(":", 1)[0] if ":" in repository_and_tag.rsplit("/", 1)[-1] else (
        repository_and_tag
    )
    return f"{repository}@{digest}"


@dataclass(frozen=True)
class Settings:
    runtime: str
    artifact_root: str
    mlflow_tracking_uri: str
    mlflow_experiment_name: str
    mlflow_artifact_location: str
    registered_model_name: str
    namespace: str
    features_image: str
    trainer_image: str
    image_pull_policy: str
    code_version: str
    step_service_account: str
    warehouse_secret_name: str
    object_store_secret_name: str
    object_store_endpoint: str
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_toleration_key: str = "nvidia.com/gpu"
    gpus_per_trainer_pod: int = 1
    gpu_pool_slots: int = 1
    keep_failed_pods: bool = True
    task_retries: int = 2

    @property
    def gpu_enabled(self) -> bool:
        """Trainer steps ask for a GPU only on a cluster whose GPU pool really has GPUs."""
        return self.runtime == "kubernetes" and self.gpus_per_trainer_pod > 0


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def load_settings() -> Settings:
    home = local_home()
    runtime = os.environ.get("PIPELINE_RUNTIME", "local")
    if runtime not in RUNTIMES:
        raise ValueError(f"PIPELINE_RUNTIME={runtime!r}: expected one of {', '.join(RUNTIMES)}")
    node_selector_raw = os.environ.get("GPU_NODE_SELECTOR", '{"nvidia.com/gpu.present": "true"}')
    try:
        node_selector = json.loads(node_selector_raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"GPU_NODE_SELECTOR is not valid JSON: {error}") from None
    if not isinstance(node_selector, dict):
        raise ValueError("GPU_NODE_SELECTOR must be a JSON object of node labels")
    version = os.environ.get("CODE_VERSION", "0.1.0")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    # A tracking server stores artifacts itself; a SQLite store would write them into the working directory.
    default_artifacts = f"file://{home / 'mlflow-artifacts'}" if tracking_uri.startswith("sqlite") else ""
    return Settings(
        runtime=runtime,
        artifact_root=os.environ.get("ARTIFACT_ROOT", f"file://{home / 'artifacts'}").rstrip("/"),
        mlflow_tracking_uri=tracking_uri,
        mlflow_artifact_location=os.environ.get("MLFLOW_ARTIFACT_LOCATION", default_artifacts),
        mlflow_experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "customer-churn"),
        registered_model_name=os.environ.get("REGISTERED_MODEL_NAME", "customer-churn"),
        namespace=os.environ.get("K8S_NAMESPACE", "mlplatform"),
        features_image=image_ref(
            os.environ.get("FEATURES_IMAGE", f"mlplatform/features:{version}"),
            os.environ.get("FEATURES_IMAGE_DIGEST", ""),
        ),
        trainer_image=image_ref(
            os.environ.get("TRAINER_IMAGE", f"mlplatform/trainer:{version}"),
            os.environ.get("TRAINER_IMAGE_DIGEST", ""),
        ),
        image_pull_policy=os.environ.get("IMAGE_PULL_POLICY", "IfNotPresent"),
        code_version=version,
        step_service_account=os.environ.get("STEP_SERVICE_ACCOUNT", "mlplatform-steps"),
        warehouse_secret_name=os.environ.get("WAREHOUSE_SECRET_NAME", "mlplatform-warehouse"),
        object_store_secret_name=os.environ.get("OBJECT_STORE_SECRET_NAME", ""),
        object_store_endpoint=os.environ.get("AWS_ENDPOINT_URL", ""),
        gpu_node_selector={str(k): str(v) for k, v in node_selector.items()},
        gpu_toleration_key=os.environ.get("GPU_TOLERATION_KEY", "nvidia.com/gpu"),
        gpus_per_trainer_pod=_int("GPU_REQUEST", 1),
        gpu_pool_slots=_int("GPU_POOL_SLOTS", 1),
        keep_failed_pods=os.environ.get("KEEP_FAILED_PODS", "true").lower() in ("1", "true", "yes"),
        task_retries=_int("TASK_RETRIES", 2),
    )

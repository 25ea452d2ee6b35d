"""Pipeline settings, read from the environment (pydantic-settings).

The same DAG code runs on a laptop (``PIPELINE_RUNTIME=local``, everything embedded under ``.local/``) and on
a cluster (``PIPELINE_RUNTIME=kubernetes``, values injected by the Helm chart's pipeline-settings ConfigMap).
Reading the environment is cheap and does no I/O, so it is safe at DAG parse time. A malformed value is a
``ValueError`` (pydantic's ``ValidationError``) that names the variable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from mlcontract.names import DEFAULT_MODEL_NAME
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGEST_PATTERN = re.compile(r"^sha256:[a-f0-9]{64}$")
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
NVIDIA_CONTROL_DEVICE = Path("/dev/nvidiactl")


def env(name: str, default: Any = "", **constraints: Any) -> Any:
    """A field read from one environment variable (its name in the chart's ConfigMap)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return Field(**factory, validation_alias=AliasChoices(name), **constraints)


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


class Settings(BaseSettings):
    """Every setting the Airflow side reads; each field is one environment variable (see ``env``).

    Empty defaults that depend on another setting (the embedded paths under ``MLPLATFORM_HOME``, the image
    tags under ``CODE_VERSION``) are filled in after reading, so an override of one moves the others.
    """

    model_config = SettingsConfigDict(extra="ignore")

    home: Path = env("MLPLATFORM_HOME", REPO_ROOT / ".local")
    runtime: Literal["local", "docker", "kubernetes"] = env("PIPELINE_RUNTIME", "local")
    artifact_root: str = env("ARTIFACT_ROOT")
    mlflow_tracking_uri: str = env("MLFLOW_TRACKING_URI")
    mlflow_artifact_location: str | None = env("MLFLOW_ARTIFACT_LOCATION", None)
    mlflow_experiment_name: str = env("MLFLOW_EXPERIMENT_NAME", DEFAULT_MODEL_NAME)
    registered_model_name: str = env("REGISTERED_MODEL_NAME", DEFAULT_MODEL_NAME)
    namespace: str = env("K8S_NAMESPACE", "mlplatform")
    code_version: str = env("CODE_VERSION", "0.1.0")
    features_image: str = env("FEATURES_IMAGE")
    features_image_digest: str = env("FEATURES_IMAGE_DIGEST", "")
    trainer_image: str = env("TRAINER_IMAGE")
    trainer_image_digest: str = env("TRAINER_IMAGE_DIGEST", "")
    image_pull_policy: str = env("IMAGE_PULL_POLICY", "IfNotPresent")
    image_pull_secrets: Annotated[list[str], NoDecode] = env("IMAGE_PULL_SECRETS", list)
    step_service_account: str = env("STEP_SERVICE_ACCOUNT", "mlplatform-steps")
    warehouse_secret_name: str = env("WAREHOUSE_SECRET_NAME", "mlplatform-warehouse")
    object_store_secret_name: str = env("OBJECT_STORE_SECRET_NAME", "")
    object_store_endpoint: str = env("AWS_ENDPOINT_URL", "")
    object_store_region: str = env("AWS_DEFAULT_REGION", "")
    gpu_node_selector: Annotated[dict[str, str], NoDecode] = env(
        "GPU_NODE_SELECTOR", lambda: dict(DEFAULT_GPU_NODE_SELECTOR)
    )
    gpu_toleration_key: str = env("GPU_TOLERATION_KEY", "nvidia.com/gpu")
    gpus_per_trainer_pod: int = env("GPU_REQUEST", 1, ge=0)
    gpu_pool_slots: int = env("GPU_POOL_SLOTS", 1, ge=1)
    keep_failed_pods: bool = env("KEEP_FAILED_PODS", True)
    task_retries: int = env("TASK_RETRIES", 2, ge=0)
    # Memory a trainer step's train+valid data may take before it trains from xgboost's external memory
    # (e.g. 6GiB); empty: half the trainer pod's memory limit (trainer.model.default_memory_budget).
    trainer_memory_budget: str = env("TRAINER_MEMORY_BUDGET", "")

    @field_validator("gpu_node_selector", mode="before")
    @classmethod
    def _node_selector_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"not valid JSON: {error}") from None
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object of node labels")  # noqa: TRY004 (pydantic reports ValueError)
            return {str(k): str(v) for k, v in value.items()}
        return value

    @field_validator("image_pull_secrets", mode="before")
    @classmethod
    def _pull_secrets_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError as error:
                raise ValueError(f"not valid JSON: {error}") from None
            if not isinstance(value, list):
                raise ValueError("must be a JSON list of Secret names")  # noqa: TRY004 (pydantic reports ValueError)
        return value

    @field_validator("trainer_memory_budget")
    @classmethod
    def _size(cls, value: str) -> str:
        from mlcontract.cli import parse_size

        if value.strip() and value.strip().lower() != "auto":
            parse_size(value)  # raises ValueError naming the value
        return value.strip()

    @field_validator("features_image_digest", "trainer_image_digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        image_ref("image", value)  # raises on a malformed digest
        return value

    @model_validator(mode="after")
    def _derived_defaults(self) -> Settings:
        self.home = self.home.resolve()
        self.artifact_root = (self.artifact_root or f"file://{self.home / 'artifacts'}").rstrip("/")
        self.mlflow_tracking_uri = self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"
        if self.mlflow_artifact_location is None:
            # A tracking server stores artifacts itself; a SQLite store would write them into the working dir.
            sqlite = self.mlflow_tracking_uri.startswith("sqlite")
            self.mlflow_artifact_location = f"file://{self.home / 'mlflow-artifacts'}" if sqlite else ""
        self.features_image = image_ref(
            self.features_image or f"mlplatform/features:{self.code_version}", self.features_image_digest
        )
        self.trainer_image = image_ref(
            self.trainer_image or f"mlplatform/trainer:{self.code_version}", self.trainer_image_digest
        )
        return self

    @property
    def gpu_enabled(self) -> bool:
        """Trainer steps ask for a GPU on a cluster whose GPU pool really has GPUs, or as containers on a
        machine with an NVIDIA driver (its control device is a cheap, parse-time-safe sign of one)."""
        if self.gpus_per_trainer_pod <= 0:
            return False
        return self.runtime == "kubernetes" or (self.runtime == "docker" and NVIDIA_CONTROL_DEVICE.exists())


def load_settings() -> Settings:
    return Settings()

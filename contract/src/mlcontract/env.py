"""What a step's pod gets from its environment (set by the pod factory, :mod:`mlplatform.steps`).

One model for both images, read with pydantic-settings: a missing or malformed value is an error that names
the variable. Secrets (the warehouse URI) are ``SecretStr`` so they never print.
"""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlcontract.errors import StepInputError


class StepEnvironment(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    step_output_uri: str | None = None
    artifact_root: str | None = None
    warehouse_uri: SecretStr | None = None
    pipeline_dag_id: str | None = None
    pipeline_run_id: str | None = None
    pipeline_task_id: str | None = None
    code_version: str | None = None
    image_ref: str | None = None
    registered_model_name: str | None = None
    xgb_device: str = "cpu"

    def output(self, out: str | None) -> str:
        """``--out`` when given, else the pod's ``STEP_OUTPUT_URI``."""
        uri = out or self.step_output_uri
        if not uri:
            raise StepInputError("--out is required (or set STEP_OUTPUT_URI)")
        return uri

    def warehouse(self, uri: str | None = None) -> str:
        """The warehouse SQLAlchemy URI: ``uri`` when given, else ``WAREHOUSE_URI``."""
        if uri:
            return uri
        if self.warehouse_uri is None or not self.warehouse_uri.get_secret_value():
            raise StepInputError("no warehouse: set WAREHOUSE_URI")
        return self.warehouse_uri.get_secret_value()

    def artifacts(self, root: str | None = None) -> str:
        if root or self.artifact_root:
            return (root or self.artifact_root or "").rstrip("/")
        raise StepInputError("no artifact root: pass --artifact-root or set ARTIFACT_ROOT")

    @property
    def pipeline_run_key(self) -> str | None:
        """``{dag_id}/{run_id}``: what makes a registered model version idempotent per pipeline run."""
        if self.pipeline_dag_id and self.pipeline_run_id:
            return f"{self.pipeline_dag_id}/{self.pipeline_run_id}"
        return None


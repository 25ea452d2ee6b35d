"""Looking up a registered model version by alias: one function and one error policy for every caller.

An alias that is not set (or a model not registered yet) is ``None``; any other registry error propagates.
MLflow is imported lazily: callers pass their own ``MlflowClient`` (the Airflow side has mlflow-skinny, the
trainer image the full mlflow), and this package does not depend on it.
"""

from __future__ import annotations

from typing import Any

# What MLflow's stores answer for "no such alias / model" (REST, SQL and file stores differ).
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def version_by_alias(client: Any, model_name: str, alias: str) -> Any | None:
    """The ``ModelVersion`` behind ``models:/{model_name}@{alias}``, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in NOT_FOUND_CODES:
            return None
        raise


def model_uri(model_name: str, version: str | int) -> str:
    """A pinned model URI (a version, never an alias, so it cannot move under the reader)."""
    return f"models:/{model_name}/{version}"

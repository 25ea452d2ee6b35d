"""The chart and the Settings model agree: every variable the chart gives the Airflow containers is read by
``mlplatform.settings.Settings`` (or is a named Airflow / image / SDK variable), and every setting a cluster
needs is set by the chart."""

from __future__ import annotations

from typing import Any

import pytest
from chart_queries import find, pipeline_settings

# Set for the Airflow containers, read by something other than Settings (each with its reader).
NOT_SETTINGS = {
    "AWS_ACCESS_KEY_ID": "s3fs/botocore, from the object-store Secret",
    "AWS_SECRET_ACCESS_KEY": "s3fs/botocore, from the object-store Secret",
}
# Settings a cluster install leaves at their defaults on purpose.
NOT_SET_BY_THE_CHART = {
    "MLPLATFORM_HOME": "the embedded platform's folder (local runtime only)",
    "MLFLOW_ARTIFACT_LOCATION": "the chart's tracking server stores artifacts itself",
    "FEATURES_IMAGE_DIGEST": "the chart pins the digest into FEATURES_IMAGE",
    "TRAINER_IMAGE_DIGEST": "the chart pins the digest into TRAINER_IMAGE",
    "AWS_DEFAULT_REGION": "set only when objectStore.region is (empty: the SDK's default)",
    "KEEP_FAILED_PODS": "default true; pipeline.extraSettings can override it",
    "TASK_RETRIES": "default 2; pipeline.extraSettings can override it",
    "TRAINER_MEMORY_BUDGET": "default: half the trainer pod's memory limit; pipeline.extraSettings can override it",
}


def settings_variables() -> dict[str, str]:
    """{environment variable: Settings field}."""
    from mlplatform.settings import Settings

    return {field.validation_alias.choices[0]: name for name, field in Settings.model_fields.items()}


def airflow_env(objects, values: dict[str, Any]) -> set[str]:
    """Every variable the chart sets for the Airflow containers: the pipeline-settings ConfigMap and the
    object-store Secret (both through `airflow.extraEnvFrom`) and `airflow.env`."""
    names = set(pipeline_settings(objects))
    for secret in find(objects, "Secret", "mlplatform-object-store"):
        names |= set(secret.get("stringData") or secret.get("data") or {})
    names |= {variable["name"] for variable in values.get("airflow", {}).get("env") or []}
    return names


@pytest.fixture(scope="module")
def rendered(chart, render, kind_values_file, kind_values):
    """(objects, coalesced values) of the default install, kind, and an install with an object-store region
    and credentials."""
    credentials = {"objectStore": {"region": "eu-west-1", "accessKeyId": "id", "secretAccessKey": "key"}}
    return {
        "default": (render({}), chart.coalesce({})),
        "kind": (render(kind_values_file), kind_values),
        "region": (render(credentials), chart.coalesce(credentials)),
    }


@pytest.mark.parametrize("install", ["default", "kind", "region"])
def test_every_variable_the_chart_sets_is_a_setting(rendered, install):
    objects, values = rendered[install]
    unknown = airflow_env(objects, values) - set(settings_variables()) - set(NOT_SETTINGS)
    assert not unknown, f"the chart sets variables no code reads: {sorted(unknown)}"


@pytest.mark.parametrize("install", ["default", "kind"])
def test_every_setting_a_cluster_needs_is_set_by_the_chart(rendered, install):
    objects, _ = rendered[install]
    needed = set(settings_variables()) - set(NOT_SET_BY_THE_CHART)
    missing = needed - set(pipeline_settings(objects))
    assert not missing, f"settings a cluster needs that the chart does not set: {sorted(missing)}"


def test_the_listed_exceptions_are_real_settings():
    assert set(NOT_SET_BY_THE_CHART) <= set(settings_variables())
    assert not set(NOT_SETTINGS) & set(settings_variables())


def test_the_chart_settings_parse(rendered, monkeypatch):
    """What the ConfigMap holds is valid for Settings (JSON where a field is structured)."""
    from mlplatform.settings import load_settings

    objects, _ = rendered["region"]
    for name, value in pipeline_settings(objects).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.runtime == "kubernetes"
    assert settings.object_store_region == "eu-west-1"
    assert settings.image_pull_secrets == []
    assert settings.gpu_node_selector and all(isinstance(v, str) for v in settings.gpu_node_selector.values())

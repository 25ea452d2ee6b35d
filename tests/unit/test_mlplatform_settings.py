"""Settings from the environment: defaults, derived values, and errors that name the variable."""

from __future__ import annotations

import pytest
from mlplatform.settings import load_settings


def test_defaults_follow_the_embedded_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPLATFORM_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.runtime == "local"
    assert settings.artifact_root == f"file://{tmp_path}/artifacts"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert settings.mlflow_artifact_location == f"file://{tmp_path}/mlflow-artifacts"
    assert settings.features_image == "mlplatform/features:0.1.0"
    assert settings.gpu_node_selector == {"nvidia.com/gpu.present": "true"}
    assert settings.image_pull_secrets == [] and settings.object_store_region == ""
    assert settings.gpu_enabled is False, "no GPU outside a cluster"


def test_cluster_values(monkeypatch):
    digest = "sha256:" + "b" * 64
    for name, value in {
        "PIPELINE_RUNTIME": "kubernetes", "ARTIFACT_ROOT": "s3://bucket/artifacts/", "CODE_VERSION": "1.2.3",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "TRAINER_IMAGE": "reg.example/trainer:1.2.3",
        "TRAINER_IMAGE_DIGEST": digest, "GPU_NODE_SELECTOR": '{"pool": "gpu", "n": 1}',
        "IMAGE_PULL_SECRETS": '["a", "b"]', "AWS_DEFAULT_REGION": "eu-west-1", "KEEP_FAILED_PODS": "false",
        "GPU_REQUEST": "2",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.artifact_root == "s3://bucket/artifacts"
    assert settings.mlflow_artifact_location == "", "a tracking server stores artifacts itself"
    assert settings.features_image == "mlplatform/features:1.2.3"
    assert settings.trainer_image == f"reg.example/trainer@{digest}"
    assert settings.gpu_node_selector == {"pool": "gpu", "n": "1"}
    assert settings.image_pull_secrets == ["a", "b"] and settings.object_store_region == "eu-west-1"
    assert settings.keep_failed_pods is False and settings.gpus_per_trainer_pod == 2 and settings.gpu_enabled


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("GPU_NODE_SELECTOR", "pool=gpu", "not valid JSON"),
        ("GPU_NODE_SELECTOR", '["gpu"]', "JSON object"),
        ("IMAGE_PULL_SECRETS", '{"a": 1}', "JSON list"),
        ("GPU_REQUEST", "one", "integer"),
        ("PIPELINE_RUNTIME", "podman", "local"),
        ("FEATURES_IMAGE_DIGEST", "latest", "sha256"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message) as error:
        load_settings()
    assert name in str(error.value)

"""``PIPELINE_RUNTIME=docker``: the exact container the Docker engine is asked for, from the rendered pods.

The pods are the ones the DAGs render (same operator, same ``build_pod_request_obj``); no engine is needed
here. The containers themselves run in the container tier (tests/containers, ``make test-containers``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from docker.types import DeviceRequest, Mount

REPO_ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3


@pytest.fixture(scope="module")
def docker_pods(tmp_path_factory):
    """Every training pod rendered for the docker runtime on a laptop-like platform."""
    from airflow.dag_processing.dagbag import DagBag

    from devtools.render import render_pods

    home = tmp_path_factory.mktemp("platform")
    monkeypatch = pytest.MonkeyPatch()
    try:
        for name, value in {
            "PIPELINE_RUNTIME": "docker",
            "MLPLATFORM_HOME": str(home),
            "ARTIFACT_ROOT": f"file://{home}/artifacts",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            # The warehouse is a Secret on a cluster; here it resolves from the host env.
            "WAREHOUSE_URI": f"sqlite:///{home}/data/warehouse.db",
        }.items():
            monkeypatch.setenv(name, value)
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        assert bag.import_errors == {}
        pods = render_pods(bag.dags["ml_model_training"])
        yield home, pods
    finally:
        monkeypatch.undo()


def kwargs_of(pod, engine_cpus=2, environ=None):
    from mlplatform.docker_runtime import container_kwargs
    from mlplatform.steps import pod_env

    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, value in (environ or {}).items():
            monkeypatch.setenv(name, value)
        return container_kwargs(pod, pod_env(pod), engine_cpus=engine_cpus)


def test_features_pod_becomes_this_exact_container(docker_pods):
    home, pods = docker_pods
    pod = pods["build_features"]
    container = pod.spec.containers[0]
    kwargs = kwargs_of(pod, environ={"WAREHOUSE_URI": f"sqlite:///{home}/data/warehouse.db"})
    environment = kwargs.pop("environment")

    assert kwargs == {
        "image": "mlplatform/features:0.1.0",
        "entrypoint": ["python", "-m", "features"],
        "command": container.args,
        "name": pod.metadata.name,
        "labels": {**pod.metadata.labels, "mlplatform/runtime": "docker"},
        "user": "10001:10001",
        "read_only": True,
        "cap_drop": ["ALL"],
        "cap_add": [],
        "privileged": False,
        "security_opt": ["no-new-privileges:true"],
        "mounts": [
            Mount(target="/tmp", source=None, type="volume"),
            Mount(target=f"{home}/artifacts", source=f"{home}/artifacts", type="bind"),
            Mount(target=f"{home}/data", source=f"{home}/data", type="bind"),
        ],
        "network_mode": "host",
        "detach": True,
        "mem_limit": 16 * GIB,
        # The pod's limit is 4 CPUs; the engine has 2 and refuses a quota above that.
        "nano_cpus": 2_000_000_000,
        "cpu_shares": 1024,
    }
    assert container.args[0] == "build"
    # The pod's env exactly, with the warehouse Secret resolved from the host env (not the pod's reference).
    plain = {v.name: v.value for v in container.env if v.value_from is None}
    assert environment == {**plain, "WAREHOUSE_URI": f"sqlite:///{home}/data/warehouse.db"}
    assert environment["STEP_OUTPUT_URI"].startswith(f"file://{home}/artifacts/runs/ml_model_training/")
    assert environment["XGB_DEVICE"] == "cpu"


def test_trainer_pod_limits_and_no_gpu_on_a_machine_without_one(docker_pods):
    _, pods = docker_pods
    kwargs = kwargs_of(pods["train_model"], engine_cpus=16)
    assert kwargs["image"] == "mlplatform/trainer:0.1.0"
    assert kwargs["entrypoint"] == ["python", "-m", "trainer"]
    assert kwargs["command"][0] == "train"
    # trainer-gpu family: 8 CPUs and 32Gi at most, 2 CPUs requested.
    assert (kwargs["nano_cpus"], kwargs["mem_limit"], kwargs["cpu_shares"]) == (8_000_000_000, 32 * GIB, 2048)
    assert "device_requests" not in kwargs
    assert kwargs["environment"]["XGB_DEVICE"] == "cpu"
    assert "WAREHOUSE_URI" not in kwargs["environment"], "the trainer pod gets no warehouse Secret"


def test_gpu_pod_gets_a_gpu_device_request(docker_pods, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from mlplatform import settings

    from devtools.render import render_pods

    home, _ = docker_pods
    # A machine with an NVIDIA driver: its control device exists.
    device = tmp_path / "nvidiactl"
    device.touch()
    monkeypatch.setattr(settings, "NVIDIA_CONTROL_DEVICE", device)
    for name, value in {"PIPELINE_RUNTIME": "docker", "MLPLATFORM_HOME": str(home), "GPU_REQUEST": "1",
                        "ARTIFACT_ROOT": f"file://{home}/artifacts"}.items():
        monkeypatch.setenv(name, value)
    pods = render_pods(DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["ml_model_training"])
    kwargs = kwargs_of(pods["train_model"])
    assert kwargs["device_requests"] == [DeviceRequest(count=1, capabilities=[["gpu"]])]
    assert kwargs["environment"]["XGB_DEVICE"] == "cuda"
    assert "device_requests" not in kwargs_of(pods["build_features"])


def test_gpu_only_where_the_machine_has_one(monkeypatch, tmp_path):
    from mlplatform import settings

    monkeypatch.setenv("PIPELINE_RUNTIME", "docker")
    monkeypatch.setattr(settings, "NVIDIA_CONTROL_DEVICE", tmp_path / "absent")
    assert settings.load_settings().gpu_enabled is False
    (tmp_path / "absent").touch()
    assert settings.load_settings().gpu_enabled is True
    monkeypatch.setenv("GPU_REQUEST", "0")
    assert settings.load_settings().gpu_enabled is False
    monkeypatch.setenv("PIPELINE_RUNTIME", "local")
    monkeypatch.setenv("GPU_REQUEST", "1")
    assert settings.load_settings().gpu_enabled is False


def test_memory_medium_scratch_is_a_tmpfs_of_its_size_limit(docker_pods):
    from kubernetes.client import models as k8s

    _, pods = docker_pods
    pod = copy.deepcopy(pods["extract"])
    pod.spec.volumes = [k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(
        medium="Memory", size_limit="2Gi"))]
    mounts = kwargs_of(pod)["mounts"]
    assert mounts[0] == Mount(target="/tmp", source=None, type="tmpfs", tmpfs_size=2 * GIB, tmpfs_mode=0o1777)


def test_a_volume_other_than_emptydir_is_refused_by_name(docker_pods):
    from kubernetes.client import models as k8s
    from mlplatform.docker_runtime import DockerRuntimeError

    _, pods = docker_pods
    pod = copy.deepcopy(pods["extract"])
    pod.spec.volumes = [k8s.V1Volume(name="scratch", config_map=k8s.V1ConfigMapVolumeSource(name="x"))]
    with pytest.raises(DockerRuntimeError, match="volume 'scratch'.*emptyDir"):
        kwargs_of(pod)


def test_host_paths_one_mount_per_outermost_folder():
    from mlplatform.docker_runtime import host_paths

    assert host_paths({
        "ARTIFACT_ROOT": "file:///data/home/artifacts",
        "STEP_OUTPUT_URI": "file:///data/home/artifacts/runs/x/y",
        "WAREHOUSE_URI": "sqlite:////data/home/warehouse.db",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "OTHER": "s3://bucket/prefix",
        "PG": "postgresql+psycopg://u@127.0.0.1/db",
        "SQLITE_ALCHEMY": "sqlite+pysqlite:////elsewhere/db/wh.db",
        "HOME": "/tmp",
    }) == ["/data/home", "/elsewhere/db"]


def test_artifact_root_writability_by_the_container_user(tmp_path):
    from mlplatform.docker_runtime import writable_by

    folder = tmp_path / "artifacts"
    folder.mkdir(mode=0o755)
    assert writable_by(str(folder), "10001:10001") is (folder.stat().st_uid == 10001)
    folder.chmod(0o777)
    assert writable_by(str(folder), "10001:10001") is True
    assert writable_by(str(folder), None) is True


def test_log_lines_are_whole_across_engine_chunks():
    from mlplatform.docker_runtime import stream_lines

    class Log:
        def __init__(self):
            self.lines = []

        def info(self, fmt, line):
            self.lines.append(fmt % line)

    log = Log()
    stream_lines([b"extract: 3 ta", b"bles\nrows: 10\n", b"no newline at the end"], log)
    assert log.lines == ["extract: 3 tables", "rows: 10", "no newline at the end"]

"""The container tier (``make test-containers``): the training DAG with ``PIPELINE_RUNTIME=docker``.

Every step runs as a container of the built images (``make images``) on a real Docker engine, with the rights
of its rendered pod, against a real MLflow server and a SQLite warehouse on the host (host network, the
platform folder bind-mounted). What a cluster adds on top (scheduling on the GPU pool, the device plugin,
the Gateway) is ``make kind-test``'s.
"""

from __future__ import annotations

import copy
import os
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.e2e_helpers import make_platform, run_dag

pytestmark = pytest.mark.containers

MODEL_NAME = "containers-churn"
DAG_ID = "ml_model_training"
STEP_UID = 10001
LOG_DIR = Path(__file__).resolve().parents[2] / "build" / "test-containers"
CONTAINER_LINE = re.compile(r"docker runtime: container (\S+) image=(\S+) user=(\S+) read_only_root=(\w+) "
                            r"cap_drop=(\[[^\]]*\]) security_opt=(\[[^\]]*\]) network=(\w+)")
# Writes to its scratch volume, prints its ids, effective capabilities, no-new-privileges and seccomp mode,
# then tries to write to the root filesystem.
RIGHTS_PROBE = (
    "import os; open('/tmp/scratch-ok', 'w').write('x');"
    "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() if ':\\t' in l);"
    "print('ids', os.getuid(), os.getgid(), 'caps', status['CapEff'], 'nnp', status['NoNewPrivs'],"
    " 'seccomp', status['Seccomp']);"
    "open('/usr/lib/probe', 'w')"
)
STEP_TASKS = {"extract", "validate_raw", "build_features", "validate_features", "train_trial", "train_model",
              "evaluate"}


@pytest.fixture(scope="module")
def engine():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        pytest.fail(f"no Docker engine answers ({error}): `make test-containers` starts one")
    return client


@pytest.fixture(scope="module")
def image_refs(engine):
    from mlplatform.settings import load_settings

    settings = load_settings()
    refs = {"features": settings.features_image, "trainer": settings.trainer_image}
    for ref in refs.values():
        assert engine.images.list(name=ref), f"{ref} is not built: `make test-containers` builds it"
    return refs


@pytest.fixture(scope="module")
def platform(tmp_path_factory, mlflow_server, airflow_home):
    home = tmp_path_factory.mktemp("platform")
    env = make_platform(home, mlflow_url=mlflow_server, airflow_home=airflow_home, model_name=MODEL_NAME)
    # The steps run as uid 10001 and write under the bind-mounted artifact root: hand them the folder, as
    # a kubelet hands a volume to the pod's fsGroup.
    (home / "artifacts").mkdir()
    for folder, _, files in os.walk(home):
        for name in [".", *files]:
            os.chown(os.path.join(folder, name), STEP_UID, STEP_UID)
    return {**env, "PIPELINE_RUNTIME": "docker"}


@pytest.fixture(scope="module")
def container_run(platform, engine, image_refs):
    started = int(time.time())
    state, log = run_dag(platform, DAG_ID, {"n_trials": 2, "max_boost_rounds": 200})
    # The whole run's log (every container's output), for a failure and for CI's record.
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / "dag-run.log").write_text(log)
    events = list(engine.events(since=started, until=int(time.time()) + 1, decode=True,
                                filters={"type": "container", "event": "create",
                                         "label": "mlplatform/runtime=docker"}))
    assert state == "success", f"{log[-6000:]}\n(whole log: {LOG_DIR / 'dag-run.log'})"
    return log, events


def test_champion_trained_in_containers_names_the_image(platform, container_run, image_refs):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=platform["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    run = client.get_run(champion.run_id)
    assert run.data.tags["image_ref"] == image_refs["trainer"]
    assert champion.tags["image_ref"] == image_refs["trainer"]


def test_every_step_ran_as_a_container_of_its_image(container_run, rendered_pods):
    _, events = container_run
    ran = [(event["Actor"]["Attributes"]["task_id"], event["Actor"]["Attributes"]["image"]) for event in events]
    assert {task for task, _ in ran} >= STEP_TASKS, ran
    for task, image in ran:
        assert image == rendered_pods[task].spec.containers[0].image, (task, image)
    assert [task for task, _ in ran].count("train_trial") == 2, "one container per mapped trial"


def test_containers_ran_as_uid_10001_with_a_read_only_root(container_run, platform):
    log, events = container_run
    lines = CONTAINER_LINE.findall(log)
    assert len(lines) == len(events) >= len(STEP_TASKS) + 1, log[-4000:]
    for name, image, user, read_only, cap_drop, security_opt, network in lines:
        assert (user, read_only, cap_drop, network) == ("10001:10001", "True", "['ALL']", "host"), name
        assert "no-new-privileges:true" in security_opt, name
    # Independent of what the engine says: every file the steps wrote on the host belongs to uid 10001.
    written = [p for p in (Path(platform["MLPLATFORM_HOME"]) / "artifacts" / "runs" / DAG_ID).rglob("manifest.json")]
    assert len(written) >= 8
    assert {p.stat().st_uid for p in written} == {STEP_UID}


def test_no_container_is_left_behind(container_run, engine):
    assert engine.containers.list(all=True, filters={"label": "mlplatform/runtime=docker"}) == []


@pytest.fixture(scope="module")
def rendered_pods(platform):
    """The DAG's pods as the docker runtime renders them on this platform."""
    from airflow.dag_processing.dagbag import DagBag

    from devtools.render import render_pods

    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, value in platform.items():
            monkeypatch.setenv(name, value)
        return render_pods(DagBag(dag_folder=platform["AIRFLOW__CORE__DAGS_FOLDER"]).dags[DAG_ID])


@pytest.fixture
def probe_pod(platform, rendered_pods):
    """The extract pod (its env resolved as the runtime does) under a new name, to run other commands in."""
    from mlplatform.steps import pod_env

    pod = copy.deepcopy(rendered_pods["extract"])
    pod.metadata.name = f"probe-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("WAREHOUSE_URI", platform["WAREHOUSE_URI"])
        return pod, pod_env(pod), platform["ARTIFACT_ROOT"]


class ListLog:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, fmt, *args):
        self.lines.append(fmt % args)

    error = info


def test_the_container_cannot_write_its_root_and_runs_unprivileged(probe_pod):
    from mlplatform.docker_runtime import DockerStep

    pod, env, artifact_root = probe_pod
    pod.spec.containers[0].command = ["python", "-c"]
    pod.spec.containers[0].args = [RIGHTS_PROBE]
    log = ListLog()
    code = DockerStep().run(pod, env, artifact_root, log)
    output = "\n".join(log.lines)
    assert code == 1, output
    # uid/gid 10001, no capabilities, no-new-privileges, seccomp filter mode (2): the engine's default profile.
    assert "ids 10001 10001 caps 0000000000000000 nnp 1 seccomp 2" in output, output
    assert "Read-only file system: '/usr/lib/probe'" in output, output


def test_killing_the_task_stops_and_removes_its_container(probe_pod, engine):
    from mlplatform.docker_runtime import DockerStep

    pod, env, artifact_root = probe_pod
    pod.spec.containers[0].command = ["python", "-c"]
    pod.spec.containers[0].args = ["import time; print('started', flush=True); time.sleep(600)"]
    step, log, result = DockerStep(), ListLog(), {}
    runner = threading.Thread(target=lambda: result.update(code=step.run(pod, env, artifact_root, log)))
    runner.start()
    deadline = time.time() + 60
    while "started" not in log.lines and time.time() < deadline:
        time.sleep(0.2)
    assert "started" in log.lines, log.lines
    assert len(engine.containers.list(filters={"name": pod.metadata.name})) == 1
    step.stop()  # what PipelineStepOperator.on_kill calls
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert result["code"] != 0
    assert engine.containers.list(all=True, filters={"name": pod.metadata.name}) == []

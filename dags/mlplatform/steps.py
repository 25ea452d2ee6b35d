"""The one step/pod factory: every compute step is a container command described once as a Kubernetes pod.

``PIPELINE_RUNTIME=kubernetes`` launches that pod with KubernetesPodOperator (deferrable) on the right node
pool. ``PIPELINE_RUNTIME=local`` renders the *same* pod and runs its container's command, args and env as a
local process, so a laptop run exercises exactly what a cluster would run. ``PIPELINE_RUNTIME=docker`` runs
that pod as a container of its image on a Docker engine (:mod:`mlplatform.docker_runtime`).

Steps do not push XCom (no sidecar): each writes ``manifest.json`` under its run-scoped output directory and
Airflow-side tasks read it from storage (``read_step_manifest``).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s
from mlcontract import layout
from mlcontract.manifests import Manifest

from mlplatform.settings import Settings, load_settings

M = TypeVar("M", bound=Manifest)

SCRATCH_DIR = "/tmp"
RUN_ID_TEMPLATE = "{{ run_id }}"
DAG_ID_TEMPLATE = "{{ dag.dag_id }}"
MAP_INDEX_SUFFIX_TEMPLATE = "{% if ti.map_index is not none and ti.map_index >= 0 %}/{{ ti.map_index }}{% endif %}"


@dataclass(frozen=True)
class StepFamily:
    """What a group of steps shares: image, CLI module, resources (request, limit), placement and time limits."""

    name: str
    module: str
    image_setting: str
    cpu: tuple[str, str]
    memory: tuple[str, str]
    execution_timeout: timedelta
    needs_warehouse: bool = False
    on_gpu_pool: bool = False

    @property
    def requests(self) -> dict[str, str]:
        return {"cpu": self.cpu[0], "memory": self.memory[0]}

    @property
    def limits(self) -> dict[str, str]:
        return {"cpu": self.cpu[1], "memory": self.memory[1]}


FEATURES = StepFamily("features", "features", "features_image", cpu=("1", "4"), memory=("4Gi", "16Gi"),
                      execution_timeout=timedelta(hours=2), needs_warehouse=True)
TRAINER_GPU = StepFamily("trainer-gpu", "trainer", "trainer_image", cpu=("2", "8"), memory=("8Gi", "32Gi"),
                         execution_timeout=timedelta(hours=3), on_gpu_pool=True)
TRAINER_CPU = StepFamily("trainer-cpu", "trainer", "trainer_image", cpu=("1", "2"), memory=("4Gi", "8Gi"),
                         execution_timeout=timedelta(hours=1))

# GPU nodes are usually scaled from zero: give the scheduler time to bring one up before failing the step.
GPU_SCHEDULE_TIMEOUT_SECONDS = 30 * 60
CPU_SCHEDULE_TIMEOUT_SECONDS = 10 * 60


def step_dir(task_id: str, settings: Settings | None = None) -> str:
    """Jinja template of a step's run-scoped output directory (rendered per task instance)."""
    settings = settings or load_settings()
    return layout.step_dir(settings.artifact_root, DAG_ID_TEMPLATE, RUN_ID_TEMPLATE, task_id)


def step_output_dir(task_id: str, map_index: int | None = None, context: Mapping[str, Any] | None = None) -> str:
    """The rendered form of ``step_dir`` for the current DAG run (Airflow-side, at run time)."""
    from airflow.sdk import get_current_context

    context = context or get_current_context()
    return layout.step_dir(load_settings().artifact_root, context["dag"].dag_id, context["run_id"], task_id,
                           map_index)


def read_step_manifest(
    task_id: str, manifest: type[M], map_index: int | None = None, context: Mapping[str, Any] | None = None
) -> M:
    """A finished step's manifest for the current DAG run, read with its model (from storage)."""
    return manifest.read(step_output_dir(task_id, map_index, context))


def _secret_env(name: str, secret: str, key: str) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(
        name=name,
        value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key)),
    )


def _env(family: StepFamily, settings: Settings) -> list[k8s.V1EnvVar]:
    image = getattr(settings, family.image_setting)
    plain = {
        "STEP_OUTPUT_URI": step_dir("{{ ti.task_id }}", settings) + MAP_INDEX_SUFFIX_TEMPLATE,
        "PIPELINE_DAG_ID": DAG_ID_TEMPLATE,
        "PIPELINE_RUN_ID": RUN_ID_TEMPLATE,
        "PIPELINE_TASK_ID": "{{ ti.task_id }}",
        "ARTIFACT_ROOT": settings.artifact_root,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": settings.mlflow_experiment_name,
        "REGISTERED_MODEL_NAME": settings.registered_model_name,
        "CODE_VERSION": settings.code_version,
        "IMAGE_REF": image,
        "XGB_DEVICE": "cuda" if family.on_gpu_pool and settings.gpu_enabled else "cpu",
        "PYTHONUNBUFFERED": "1",
        # The root filesystem is read-only: everything that caches (matplotlib, pip, HOME) goes to scratch.
        "HOME": SCRATCH_DIR,
        "MPLCONFIGDIR": f"{SCRATCH_DIR}/matplotlib",
    }
    if settings.mlflow_artifact_location:
        plain["MLFLOW_ARTIFACT_LOCATION"] = settings.mlflow_artifact_location
    if settings.object_store_endpoint:
        plain["AWS_ENDPOINT_URL"] = settings.object_store_endpoint
    if settings.object_store_region:
        plain["AWS_DEFAULT_REGION"] = settings.object_store_region
    if settings.trainer_memory_budget and family.module == "trainer":
        plain["TRAINER_MEMORY_BUDGET"] = settings.trainer_memory_budget  # the trainer CLI's default
    env = [k8s.V1EnvVar(name=name, value=value) for name, value in plain.items()]
    if family.needs_warehouse:
        env.append(_secret_env("WAREHOUSE_URI", settings.warehouse_secret_name, "uri"))
    if settings.object_store_secret_name:
        env.append(_secret_env("AWS_ACCESS_KEY_ID", settings.object_store_secret_name, "AWS_ACCESS_KEY_ID"))
        env.append(
            _secret_env("AWS_SECRET_ACCESS_KEY", settings.object_store_secret_name, "AWS_SECRET_ACCESS_KEY")
        )
    return env


def _resources(family: StepFamily, settings: Settings) -> k8s.V1ResourceRequirements:
    requests, limits = dict(family.requests), dict(family.limits)
    if family.on_gpu_pool and settings.gpu_enabled:
        # Extended resources must be requested and limited with the same value.
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(settings.gpus_per_trainer_pod)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _placement(family: StepFamily, settings: Settings) -> dict[str, Any]:
    if not family.on_gpu_pool:
        return {"node_selector": None, "tolerations": None}
    return {
        "node_selector": dict(settings.gpu_node_selector) or None,
        "tolerations": [
            k8s.V1Toleration(key=settings.gpu_toleration_key, operator="Exists", effect="NoSchedule")
        ],
    }


POD_SECURITY_CONTEXT = k8s.V1PodSecurityContext(
    run_as_non_root=True,
    run_as_user=10001,
    run_as_group=10001,
    fs_group=10001,
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)
CONTAINER_SECURITY_CONTEXT = k8s.V1SecurityContext(
    allow_privilege_escalation=False,
    privileged=False,
    read_only_root_filesystem=True,
    run_as_non_root=True,
    capabilities=k8s.V1Capabilities(drop=["ALL"]),
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)


def pod_kwargs(family: StepFamily, settings: Settings | None = None) -> dict[str, Any]:
    """Everything about a step's pod except its arguments: the single source of placement and rights."""
    settings = settings or load_settings()
    image = getattr(settings, family.image_setting)
    gpu_step = family.on_gpu_pool
    kwargs: dict[str, Any] = {
        "runtime": settings.runtime,
        "namespace": settings.namespace,
        "image": image,
        "image_pull_policy": settings.image_pull_policy,
        "cmds": ["python", "-m", family.module],
        "env_vars": _env(family, settings),
        "container_resources": _resources(family, settings),
        "labels": {
            "app.kubernetes.io/part-of": "mlplatform",
            "app.kubernetes.io/component": family.module,
            "mlplatform/step-family": family.name,
        },
        "annotations": {"mlplatform/image": image},
        "service_account_name": settings.step_service_account,
        "image_pull_secrets": [k8s.V1LocalObjectReference(name=name) for name in settings.image_pull_secrets] or None,
        "automount_service_account_token": False,
        "security_context": POD_SECURITY_CONTEXT,
        "container_security_context": CONTAINER_SECURITY_CONTEXT,
        "volumes": [k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="20Gi"))],
        "volume_mounts": [k8s.V1VolumeMount(name="scratch", mount_path=SCRATCH_DIR)],
        "deferrable": True,
        "do_xcom_push": False,
        "get_logs": True,
        "log_events_on_failure": True,
        "on_finish_action": "delete_succeeded_pod" if settings.keep_failed_pods else "delete_pod",
        "startup_timeout_seconds": GPU_SCHEDULE_TIMEOUT_SECONDS if gpu_step else CPU_SCHEDULE_TIMEOUT_SECONDS,
        "schedule_timeout_seconds": GPU_SCHEDULE_TIMEOUT_SECONDS if gpu_step else CPU_SCHEDULE_TIMEOUT_SECONDS,
        "execution_timeout": family.execution_timeout,
        "random_name_suffix": True,
        **_placement(family, settings),
    }
    if gpu_step:
        kwargs["pool"] = "gpu_pool"
        kwargs["pool_slots"] = settings.gpu_pool_slots
    return kwargs


def step(task_id: str, family: StepFamily, arguments: list[str], **overrides: Any) -> PipelineStepOperator:
    """A pipeline step: ``python -m <family.module> <arguments...>`` in the family's pod."""
    return PipelineStepOperator(task_id=task_id, arguments=arguments, **{**pod_kwargs(family), **overrides})


def mapped_step(task_id: str, family: StepFamily, **overrides: Any):
    """A step to fan out with ``.expand(arguments=[...])`` (dynamic task mapping)."""
    return PipelineStepOperator.partial(task_id=task_id, **{**pod_kwargs(family), **overrides})


class PipelineStepOperator(KubernetesPodOperator):
    """KubernetesPodOperator that can also run its rendered pod as a local process."""

    def __init__(self, *, runtime: str = "kubernetes", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self._local_process: subprocess.Popen | None = None
        self._docker_step: Any = None

    def _do_render_template_fields(self, parent, template_fields, context, jinja_env, seen_oids) -> None:
        # Templates inside V1EnvVar objects are rendered in place, and mapped instances share the partial's
        # objects: without a private copy the first instance's output path would leak into the others.
        if parent is self:
            self.env_vars = copy.deepcopy(self.env_vars)
        super()._do_render_template_fields(parent, template_fields, context, jinja_env, seen_oids)

    def execute(self, context):
        if self.runtime == "kubernetes":
            return super().execute(context)
        pod = self.build_pod_request_obj(context, dry_run=True)
        if self.runtime == "docker":
            from mlplatform.docker_runtime import DockerStep

            self._docker_step = DockerStep()
            return_code = self._docker_step.run(pod, pod_env(pod), load_settings().artifact_root, self.log)
        else:
            with tempfile.TemporaryDirectory(prefix="mlplatform-step-") as scratch:
                self._local_process = start_pod_locally(pod, scratch)
                return_code = stream_and_wait(self._local_process, self.log)
        if return_code != 0:
            container = pod.spec.containers[0]
            argv = local_argv(pod) if self.runtime == "local" else [*container.command, *(container.args or [])]
            raise RuntimeError(
                f"step {self.task_id!r} failed: `{' '.join(argv[:4])} ...` exited with {return_code}"
                " (the step's own error message is in the log above)"
            )

    def on_kill(self) -> None:
        if self.runtime == "kubernetes":
            return super().on_kill()
        if self._docker_step is not None:
            self._docker_step.stop()
        if self._local_process and self._local_process.poll() is None:
            os.killpg(self._local_process.pid, signal.SIGTERM)


# --- the local runtime: run a rendered pod's container as a process -------------------------------------

LOCAL_SECRET_DEFAULTS = {"WAREHOUSE_URI": lambda: f"sqlite:///{load_settings().home / 'warehouse.db'}"}
# A process is not a container: it needs the host's basics to find the interpreter and libraries.
HOST_ENV_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "VIRTUAL_ENV")


def local_argv(pod: k8s.V1Pod) -> list[str]:
    container = pod.spec.containers[0]
    argv = list(container.command or []) + list(container.args or [])
    if argv and argv[0] == "python":
        # The image's `python` is, locally, the interpreter of the project's environment.
        argv[0] = sys.executable
    return argv


def pod_env(pod: k8s.V1Pod) -> dict[str, str]:
    """The container's env; secret references resolve from this process's env (a laptop has no Secrets)."""
    env = {}
    for variable in pod.spec.containers[0].env or []:
        if variable.value_from is None:
            env[variable.name] = variable.value or ""
        elif variable.name in os.environ:
            env[variable.name] = os.environ[variable.name]
        elif variable.name in LOCAL_SECRET_DEFAULTS:
            env[variable.name] = LOCAL_SECRET_DEFAULTS[variable.name]()
    return env


def local_env(pod: k8s.V1Pod, scratch: str) -> dict[str, str]:
    """``pod_env`` for a process: the host's basics, and the scratch volume as a per-step temporary directory."""
    env = {name: os.environ[name] for name in HOST_ENV_PASSTHROUGH if name in os.environ}
    for name, value in pod_env(pod).items():
        env[name] = value.replace(SCRATCH_DIR, scratch, 1) if value.startswith(SCRATCH_DIR) else value
    return env


def start_pod_locally(pod: k8s.V1Pod, scratch: str) -> subprocess.Popen:
    # Like the container, the process works in its scratch directory, never in the caller's.
    return subprocess.Popen(
        local_argv(pod),
        env=local_env(pod, scratch),
        cwd=scratch,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def stream_and_wait(process: subprocess.Popen, log) -> int:
    assert process.stdout is not None
    for line in process.stdout:
        log.info("%s", line.rstrip())
    return process.wait()

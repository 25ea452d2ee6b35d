"""``PIPELINE_RUNTIME=docker``: a rendered step pod as a container of its image on a Docker engine.

What a kubelet would do with the pod, minus scheduling (peer: Kubeflow Pipelines' local ``DockerRunner``):
the container's command, args and env; ``runAsUser``/``runAsGroup``; a read-only root filesystem, dropped
capabilities, no privilege escalation, the engine's default seccomp profile; each emptyDir as an anonymous
volume (or a tmpfs for ``medium: Memory``) removed with the container; CPU and memory limits (CPU requests as
shares, as the kubelet sets them); a GPU device request when the pod asks for ``nvidia.com/gpu``. Containers
use the host network, so MLflow and the warehouse are on loopback as in the other tiers. A laptop has no
object store: every ``file://`` or ``sqlite:///`` location in the env (artifact root, SQLite warehouse or
MLflow store) is bind-mounted at the same path, so the paths in manifests mean the same inside and out.

The Docker SDK is imported lazily: only this runtime needs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes.client import models as k8s
from kubernetes.utils.quantity import parse_quantity

GPU_RESOURCE = "nvidia.com/gpu"
STOP_GRACE_SECONDS = 30
KILLED_EXIT_CODE = 137  # what a shell reports for a process ended by SIGKILL
# Where data lives on the host for URIs of these schemes (the path part of the URI).
HOST_PATH_SCHEMES = ("file", "sqlite")


class DockerRuntimeError(RuntimeError):
    """The engine cannot run the step (no engine, a missing image, an unwritable artifact root)."""


# --- the pod's meaning as container kwargs (pure: what the unit tests check) --------------------------------


def host_paths(env: Mapping[str, str]) -> list[str]:
    """The host directories the container must see: each ``file://`` location, each SQLite file's folder.

    Nested paths collapse into their outermost directory: one mount each.
    """
    found = set()
    for value in env.values():
        parsed = urlparse(value)
        scheme = parsed.scheme.split("+", 1)[0]
        if scheme not in HOST_PATH_SCHEMES or not parsed.path.startswith("/"):
            continue
        path = parsed.path
        if scheme == "sqlite":
            # sqlite:////abs/file.db -> /abs (the journal is written beside the database file).
            path = str(Path(path[1:] if path.startswith("//") else path).parent)
        found.add(os.path.normpath(path))
    outermost = []
    for path in sorted(found):
        if not any(path == kept or path.startswith(kept.rstrip("/") + "/") for kept in outermost):
            outermost.append(path)
    return outermost


def container_kwargs(pod: k8s.V1Pod, env: Mapping[str, str], *, engine_cpus: int) -> dict[str, Any]:
    """``docker.containers.run`` keyword arguments that give ``pod``'s first container its meaning.

    ``env`` is the container's environment with secrets already resolved (``steps.pod_env``); CPU limits
    are capped at the engine's CPU count (the engine refuses more, a kubelet would just never reach it).
    """
    from docker.types import DeviceRequest, Mount

    container = pod.spec.containers[0]
    pod_context = pod.spec.security_context or k8s.V1PodSecurityContext()
    context = container.security_context or k8s.V1SecurityContext()
    resources = container.resources or k8s.V1ResourceRequirements()
    limits, requests = dict(resources.limits or {}), dict(resources.requests or {})

    run_as_user = context.run_as_user if context.run_as_user is not None else pod_context.run_as_user
    run_as_group = context.run_as_group if context.run_as_group is not None else pod_context.run_as_group
    user = None
    if run_as_user is not None:
        user = f"{run_as_user}:{run_as_group}" if run_as_group is not None else str(run_as_user)

    security_opt = []
    if context.allow_privilege_escalation is False:
        security_opt.append("no-new-privileges:true")
    seccomp = context.seccomp_profile or pod_context.seccomp_profile
    if seccomp is not None and seccomp.type == "Unconfined":
        security_opt.append("seccomp=unconfined")
    # RuntimeDefault: the engine applies its default profile to every container that names none.

    kwargs: dict[str, Any] = {
        "image": container.image,
        "entrypoint": list(container.command or []) or None,
        "command": list(container.args or []),
        "environment": dict(env),
        "name": pod.metadata.name,
        "labels": {**(pod.metadata.labels or {}), "mlplatform/runtime": "docker"},
        "user": user,
        "read_only": bool(context.read_only_root_filesystem),
        "cap_drop": list(context.capabilities.drop or []) if context.capabilities else [],
        "cap_add": list(context.capabilities.add or []) if context.capabilities else [],
        "privileged": bool(context.privileged),
        "security_opt": security_opt,
        "mounts": scratch_mounts(pod) + [
            Mount(target=path, source=path, type="bind") for path in host_paths(env)
        ],
        "network_mode": "host",
        "detach": True,
    }
    if container.working_dir:
        kwargs["working_dir"] = container.working_dir
    if "memory" in limits:
        kwargs["mem_limit"] = int(parse_quantity(limits["memory"]))
    if "cpu" in limits:
        kwargs["nano_cpus"] = int(min(parse_quantity(limits["cpu"]), Decimal(engine_cpus)) * 1_000_000_000)
    if "cpu" in requests:
        # The kubelet's mapping of a CPU request to a relative weight (1 core = 1024 shares).
        kwargs["cpu_shares"] = max(2, int(parse_quantity(requests["cpu"]) * 1024))
    gpus = int(limits.get(GPU_RESOURCE, 0) or 0)
    if gpus:
        kwargs["device_requests"] = [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return kwargs


def scratch_mounts(pod: k8s.V1Pod) -> list[Any]:
    """Each emptyDir mount: a tmpfs for ``medium: Memory``, else an anonymous volume (disk, like a node's)."""
    from docker.types import Mount

    empty_dirs = {v.name: v.empty_dir for v in pod.spec.volumes or [] if v.empty_dir is not None}
    mounts = []
    for volume_mount in pod.spec.containers[0].volume_mounts or []:
        empty_dir = empty_dirs.get(volume_mount.name)
        if empty_dir is None:
            raise DockerRuntimeError(
                f"volume {volume_mount.name!r}: the docker runtime mounts emptyDir volumes only"
            )
        if empty_dir.medium == "Memory":
            size = int(parse_quantity(empty_dir.size_limit)) if empty_dir.size_limit else None
            mounts.append(Mount(target=volume_mount.mount_path, source=None, type="tmpfs",
                               tmpfs_size=size, tmpfs_mode=0o1777))
        else:
            # An anonymous volume starts as a copy of the image's folder (/tmp: mode 1777) and goes with
            # the container (remove(v=True)).
            mounts.append(Mount(target=volume_mount.mount_path, source=None, type="volume"))
    return mounts


def writable_by(path: str, user: str | None) -> bool:
    """Whether ``user`` ("uid:gid") may create files in the host directory ``path`` (mode bits only)."""
    if user is None:
        return True
    uid, _, gid = user.partition(":")
    info = os.stat(path)
    if int(uid) == 0 or info.st_mode & 0o002:
        return True
    if info.st_uid == int(uid):
        return bool(info.st_mode & 0o200)
    return bool(gid) and info.st_gid == int(gid) and bool(info.st_mode & 0o020)


# --- running it ---------------------------------------------------------------------------------------


class DockerStep:
    """One rendered pod run as a container: start, stream its log, wait, always remove; ``stop`` on kill."""

    def __init__(self, client_factory: Callable[[], Any] | None = None) -> None:
        self._client_factory = client_factory
        self._container: Any = None

    def _client(self) -> Any:
        import docker

        try:
            client = (self._client_factory or docker.from_env)()
            client.ping()
        except docker.errors.DockerException as error:
            raise DockerRuntimeError(
                f"PIPELINE_RUNTIME=docker: no Docker engine answers ({error}); start one (`make docker-engine`)"
            ) from None
        return client

    def run(self, pod: k8s.V1Pod, env: Mapping[str, str], artifact_root: str, log: Any) -> int:
        import docker

        client = self._client()
        kwargs = container_kwargs(pod, env, engine_cpus=int(client.info().get("NCPU") or os.cpu_count() or 1))
        for path in host_paths(env):
            os.makedirs(path, exist_ok=True)
        self._check_artifact_root(artifact_root, kwargs["user"])
        try:
            container = self._container = client.containers.run(**kwargs)
        except docker.errors.ImageNotFound:
            raise DockerRuntimeError(
                f"image {kwargs['image']} is not on the Docker engine and cannot be pulled: build it (`make images`)"
            ) from None
        except docker.errors.APIError as error:
            raise DockerRuntimeError(f"the Docker engine refused the step's container: {error.explanation}") from None
        try:
            container.reload()
            log.info("%s", describe(container.attrs))
            stream_lines(container.logs(stream=True, follow=True), log)
            try:
                status = container.wait()
                container.reload()
            except docker.errors.NotFound:
                # `stop` (the task was killed) removed it meanwhile.
                log.error("container %s was stopped and removed: the task was killed", kwargs["name"])
                return KILLED_EXIT_CODE
            if container.attrs["State"].get("OOMKilled"):
                log.error("container %s was killed: out of memory (limit %s bytes)", kwargs["name"],
                          kwargs.get("mem_limit"))
            return int(status.get("StatusCode", 1))
        finally:
            self.remove()

    def _check_artifact_root(self, artifact_root: str, user: str | None) -> None:
        paths = host_paths({"ARTIFACT_ROOT": artifact_root})
        for path in paths:
            if not writable_by(path, user):
                raise DockerRuntimeError(
                    f"ARTIFACT_ROOT {path} is not writable by the step containers' user {user}: "
                    f"`chown -R {user} {path}` (or use an object store)"
                )

    def stop(self) -> None:
        """Stop (SIGTERM, then SIGKILL after the grace period) and remove the running container."""
        if self._container is not None:
            try:
                self._container.stop(timeout=STOP_GRACE_SECONDS)
            finally:
                self.remove()

    def remove(self) -> None:
        import docker

        container, self._container = self._container, None
        if container is not None:
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass


def describe(attrs: Mapping[str, Any]) -> str:
    """One log line with the rights the engine gave the container (its own inspect data, not our request)."""
    config, host = attrs["Config"], attrs["HostConfig"]
    return (
        f"docker runtime: container {attrs['Name'].lstrip('/')} image={config['Image']} user={config['User']} "
        f"read_only_root={host['ReadonlyRootfs']} cap_drop={host.get('CapDrop')} "
        f"security_opt={host.get('SecurityOpt')} network={host['NetworkMode']} "
        f"memory={host.get('Memory')} nano_cpus={host.get('NanoCpus')}"
    )


def stream_lines(chunks: Iterable[bytes], log: Any) -> None:
    """The container's output into the task log, a line at a time (the engine's chunks split lines)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            log.info("%s", line.decode(errors="replace").rstrip())
    if pending:
        log.info("%s", pending.decode(errors="replace").rstrip())

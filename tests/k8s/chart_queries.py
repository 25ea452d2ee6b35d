"""Small queries over rendered chart objects, shared by the chart test modules."""

from __future__ import annotations

from typing import Any

import yaml

Objects = list[tuple[str, dict[str, Any]]]
RELEASE = "mlplatform"


def find(objects: Objects, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for _, o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pipeline_settings(objects: Objects) -> dict[str, str]:
    """The data of the pipeline-settings ConfigMap (env of every Airflow container)."""
    return one(objects, "ConfigMap", f"{RELEASE}-pipeline-settings")["data"]


# --- pods and what they reference ----------------------------------------------------------------

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Pod", "CronJob"}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def pods(objects: Objects) -> dict[str, dict[str, Any]]:
    """{"Kind/name": pod spec} of every pod the release runs: the workloads, and the
    KubernetesExecutor's worker pod (the pod_template_file.yaml of the Airflow config ConfigMap)."""
    found = {
        f"{o['kind']}/{o['metadata']['name']}": pod_spec(o) for _, o in objects if o["kind"] in WORKLOAD_KINDS
    }
    for _, o in objects:
        template = (o.get("data") or {}).get("pod_template_file.yaml") if o["kind"] == "ConfigMap" else None
        if template:
            pod = yaml.safe_load(template)
            found[f"ConfigMap/{o['metadata']['name']}:pod_template_file.yaml"] = pod["spec"]
    return found


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return (spec.get("initContainers") or []) + spec["containers"]


# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What breaks the restricted Pod Security Standard (kubernetes.io/docs/concepts/security/
    pod-security-standards, "Restricted" and the baseline it includes) in a pod spec; [] when none."""
    problems = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(field)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("pod seccomp Unconfined")
    for sysctl in pod_sc.get("sysctls", []):
        problems.append(f"sysctl {sysctl['name']}")
    for c in containers(spec):
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile {seccomp or 'unset'}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {sc['procMount']}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


def references(spec: dict[str, Any]) -> set[tuple[str, str, str | None, bool]]:
    """(kind, name, key or None, optional) of every Secret and ConfigMap a pod spec uses: volumes
    (projected ones too), env valueFrom, envFrom and image pull Secrets."""
    refs: set[tuple[str, str, str | None, bool]] = set()
    for pull in spec.get("imagePullSecrets") or []:
        refs.add(("Secret", pull["name"], None, False))
    for volume in spec.get("volumes") or []:
        sources = [volume] + [s for s in (volume.get("projected") or {}).get("sources", [])]
        for source in sources:
            if "secret" in source:
                secret = source["secret"]
                refs.add(
                    ("Secret", secret.get("secretName") or secret["name"], None, bool(secret.get("optional")))
                )
            if "configMap" in source:
                refs.add(
                    (
                        "ConfigMap",
                        source["configMap"]["name"],
                        None,
                        bool(source["configMap"].get("optional")),
                    )
                )
    for c in containers(spec):
        for var in c.get("env") or []:
            value_from = var.get("valueFrom") or {}
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in value_from:
                    ref = value_from[field]
                    refs.add((kind, ref["name"], ref["key"], bool(ref.get("optional"))))
        for source in c.get("envFrom") or []:
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in source:
                    refs.add((kind, source[field]["name"], None, bool(source[field].get("optional"))))
    return refs


def keys_of(obj: dict[str, Any]) -> set[str]:
    """The keys a rendered Secret or ConfigMap holds."""
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})

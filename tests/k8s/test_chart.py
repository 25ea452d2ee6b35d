"""Chart tests: render with the real Helm engine, validate every object against the Kubernetes
schema, then assert with small queries (apache/airflow helm-tests style)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from chart_queries import find, one, pipeline_settings
from k8s_schema import K8sSchemaError, validate_k8s_object

REPO_ROOT = Path(__file__).resolve().parents[2]
Objects = list[tuple[str, dict[str, Any]]]
RELEASE = "mlplatform"
NAMESPACE = "mlplatform"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Pod", "CronJob"}
OURS = "mlplatform/templates/"
DIGEST = "sha256:" + "ab" * 32


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def helm_error(fn, *args, **kwargs) -> str:
    with pytest.raises(helm.HelmError) as err:
        fn(*args, **kwargs)
    return str(err.value)


# --- chart metadata, lint, values contract -------------------------------------------------


def test_app_version_is_the_project_version(chart):
    meta = yaml.safe_load((chart.CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert meta["apiVersion"] == "v2"
    assert str(meta["appVersion"]) == project["version"]


def test_airflow_dependency_is_the_pinned_official_chart(chart):
    deps = yaml.safe_load((chart.CHART_DIR / "Chart.yaml").read_text())["dependencies"]
    airflow = next(d for d in deps if d["name"] == "airflow")
    assert airflow["repository"] == "https://airflow.apache.org"
    assert re.fullmatch(r"\d+\.\d+\.\d+", airflow["version"]), "pin an exact chart version"
    assert airflow["condition"] == "airflow.enabled"


@pytest.mark.parametrize("variant", ["default", "kind"])
def test_lint_is_clean(chart, kind_values_file, variant):
    values = kind_values_file if variant == "kind" else {}
    report = helm.lint(chart.CHART_DIR, values, strict=True, namespace=NAMESPACE)
    problems = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    if not chart.subchart_present():
        # Expected until `helm dependency build` has fetched the official chart (needs network).
        problems = [p for p in problems if "missing these dependencies: airflow" not in p]
    assert problems == []


def test_values_yaml_is_valid_against_the_schema(chart, kind_values):
    schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    jsonschema.validate(kind_values, schema)


def _schema_nodes(node: dict[str, Any], path: str = "", defaulted: bool = False):
    """(path, node, whether the node or an ancestor declares a default) for every property."""
    defaulted = defaulted or "default" in node
    yield path, node, defaulted
    for key, child in node.get("properties", {}).items():
        yield from _schema_nodes(child, f"{path}.{key}" if path else key, defaulted)


def test_schema_is_closed_and_described_everywhere(chart):
    schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    for path, node, defaulted in _schema_nodes(schema):
        if path.startswith("airflow"):
            continue  # the official chart's values, validated by its own schema
        if path:
            assert node.get("description"), f"{path}: no description"
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: additionalProperties must be false"
        elif path and path != "global":
            assert defaulted, f"{path}: no default"


def _leaf_paths(values: dict[str, Any], prefix: str = ""):
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if (
            isinstance(value, dict)
            and value
            and path not in {"gpuPool.nodeSelector"}
            and not path.endswith("resources")
        ):
            yield from _leaf_paths(value, path)
        else:
            yield path


def test_every_value_has_a_param_doc(chart):
    text = (chart.CHART_DIR / "values.yaml").read_text()
    documented = set(re.findall(r"^## @param (\S+)", text, flags=re.MULTILINE))
    values = yaml.safe_load(text)
    values.pop("airflow")
    missing = [p for p in _leaf_paths(values) if p not in documented]
    assert missing == []
    assert {"airflow.enabled", "airflow"} <= documented


# --- every object valid; restricted pods; RBAC ---------------------------------------------


def test_k8s_schema_validator_is_strict():
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Never"}]},
    }
    with pytest.raises(K8sSchemaError, match="imagePullPolcy"):
        validate_k8s_object(pod)


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects", "kind_objects_with_airflow"])
def test_every_rendered_object_is_valid_kubernetes(variant, request):
    objects: Objects = request.getfixturevalue(variant)
    assert len(objects) >= 6
    for _, obj in objects:
        validate_k8s_object(obj)
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE


def _our_workloads(objects: Objects):
    return [(src, o) for src, o in objects if src.startswith(OURS) and o["kind"] in WORKLOAD_KINDS]


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects_with_airflow"])
def test_our_pods_meet_the_restricted_pod_security_standard(variant, request):
    workloads = _our_workloads(request.getfixturevalue(variant))
    assert workloads, "no workloads rendered"
    for _, obj in workloads:
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no API token needed"
        for c in containers(spec):
            sc = c.get("securityContext", {})
            cwhere = f"{where}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, cwhere
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cwhere
            assert not sc.get("capabilities", {}).get("add"), cwhere
            assert not sc.get("privileged"), cwhere
            assert sc.get("readOnlyRootFilesystem") is True, cwhere
            assert (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")) is True, cwhere
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, cwhere
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, cwhere
            assert c.get("resources", {}).get("requests"), f"{cwhere}: set resource requests"
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, f"{cwhere}: writable /tmp"


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects_with_airflow"])
def test_rbac_is_namespaced_and_least_privilege(variant, request):
    objects: Objects = request.getfixturevalue(variant)
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    role = one(objects, "Role", f"{RELEASE}-pod-launcher")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"] or rule.get("resourceNames")
    assert granted <= {("pods", v) for v in ("create", "get", "list", "watch", "delete", "patch")} | {
        ("pods/log", "get"),
        ("events", "get"),
        ("events", "list"),
    }
    assert ("pods", "create") in granted and ("pods/log", "get") in granted
    assert not any(res == "pods/exec" for res, _ in granted)
    binding = one(objects, "RoleBinding", f"{RELEASE}-pod-launcher")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert {s["name"] for s in binding["subjects"]} == {
        f"{RELEASE}-worker",
        f"{RELEASE}-triggerer",
        f"{RELEASE}-scheduler",
    }
    assert all(s["kind"] == "ServiceAccount" and s["namespace"] == NAMESPACE for s in binding["subjects"])


def test_step_service_account_mounts_no_token(default_objects):
    sa = one(default_objects, "ServiceAccount", f"{RELEASE}-step")
    assert sa["automountServiceAccountToken"] is False
    assert pipeline_settings(default_objects)["STEP_SERVICE_ACCOUNT"] == sa["metadata"]["name"]


# --- bad values fail at render ----------------------------------------------------------------


def test_unknown_key_is_a_schema_error(render):
    message = helm_error(render, {"mlflow": {"replica": 2}})
    assert "additional properties 'replica' not allowed" in message
    assert "additional properties" in helm_error(render, {"surprise": True})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"objectStore": {"bucket": ""}},
            "objectStore.bucket is required when objectStore.inCluster.enabled is false",
        ),
        (
            {"objectStore": {"inCluster": {"enabled": True}}},
            "objectStore.inCluster.enabled needs credentials",
        ),
        ({"objectStore": {"accessKeyId": "AKIA"}}, "must be set together"),
        (
            {"gpuPool": {"nodeSelector": {"nvidia.com/gpu.present": None}}},
            "gpuPool.gpusPerPod > 0 needs gpuPool.nodeSelector",
        ),
        ({"gpuPool": {"tolerationKey": ""}}, "needs gpuPool.tolerationKey"),
        ({"warehouse": {"existingSecret": ""}}, "warehouse: set warehouse.existingSecret or warehouse.uri"),
        ({"warehouse": {"uri": "postgresql://x"}}, "either warehouse.existingSecret or warehouse.uri"),
        (
            {"mlflow": {"backendStore": {"existingSecret": ""}}},
            "mlflow.backendStore: set existingSecret or uri",
        ),
        ({"postgresql": {"enabled": True}}, "postgresql.enabled needs postgresql.auth.password"),
        ({"images": {"features": {"digest": "sha256:123"}}}, "digest"),
        ({"images": {"trainer": {"digest": "md5:" + "a" * 64}}}, "digest"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(render, values, expected):
    assert expected in helm_error(render, values)


def test_check_values_fails_on_bad_digest_even_past_the_schema(chart):
    # The schema pattern catches it first; check-values.yaml is the second line of defence for
    # renders that skip schema validation, so exercise the template on its own.
    text = (chart.CHART_DIR / "templates" / "check-values.yaml").read_text()
    assert "sha256:[a-f0-9]{64}" in text and "fail" in text


# --- images -----------------------------------------------------------------------------------


def test_digest_overrides_tag(render):
    objects = render(
        {"images": {"features": {"tag": "1.2.3", "digest": DIGEST}, "trainer": {"tag": "1.2.3"}},
         "mlflow": {"image": {"tag": "1.2.3", "digest": DIGEST}}}
    )
    data = pipeline_settings(objects)
    assert data["FEATURES_IMAGE"] == f"ghcr.io/your-org/mlplatform-features@{DIGEST}"
    assert data["TRAINER_IMAGE"] == "ghcr.io/your-org/mlplatform-trainer:1.2.3"
    # the tracking server runs its own image (it holds the PostgreSQL driver the trainer image does not)
    mlflow = one(objects, "Deployment", f"{RELEASE}-mlflow")
    assert pod_spec(mlflow)["containers"][0]["image"] == f"ghcr.io/your-org/mlplatform-mlflow@{DIGEST}"


def test_tag_defaults_to_app_version(chart, default_objects):
    app_version = str(yaml.safe_load((chart.CHART_DIR / "Chart.yaml").read_text())["appVersion"])
    assert pipeline_settings(default_objects)["FEATURES_IMAGE"].endswith(f":{app_version}")


# --- settings the DAGs read -----------------------------------------------------------------


REQUIRED_SETTINGS = {
    "PIPELINE_RUNTIME",
    "ARTIFACT_ROOT",
    "MLFLOW_TRACKING_URI",
    "K8S_NAMESPACE",
    "FEATURES_IMAGE",
    "TRAINER_IMAGE",
    "GPU_NODE_SELECTOR",
    "GPU_TOLERATION_KEY",
    "GPU_REQUEST",
    "STEP_SERVICE_ACCOUNT",
    "WAREHOUSE_SECRET_NAME",
    "OBJECT_STORE_SECRET_NAME",
    "AWS_ENDPOINT_URL",
    "REGISTERED_MODEL_NAME",
    "MLFLOW_EXPERIMENT_NAME",
    "IMAGE_PULL_POLICY",
    "CODE_VERSION",
    "GPU_POOL_SLOTS",
}


def test_pipeline_settings_defaults(default_objects):
    data = pipeline_settings(default_objects)
    assert REQUIRED_SETTINGS <= data.keys()
    assert data["PIPELINE_RUNTIME"] == "kubernetes"
    assert data["ARTIFACT_ROOT"] == "s3://mlplatform/artifacts"
    assert data["MLFLOW_TRACKING_URI"] == f"http://{RELEASE}-mlflow:5000"
    assert data["K8S_NAMESPACE"] == NAMESPACE
    assert json.loads(data["GPU_NODE_SELECTOR"]) == {"nvidia.com/gpu.present": "true"}
    assert data["GPU_REQUEST"] == "1"
    assert data["WAREHOUSE_SECRET_NAME"] == "mlplatform-warehouse"
    assert data["OBJECT_STORE_SECRET_NAME"] == ""  # workload identity: no static keys by default
    assert data["AWS_ENDPOINT_URL"] == ""
    assert data["REGISTERED_MODEL_NAME"] == "customer-churn"
    assert not find(default_objects, "Secret"), "production defaults reference existing Secrets only"


def test_kind_values_render_the_gpu_pool_without_gpus(kind_objects, kind_values):
    data = pipeline_settings(kind_objects)
    assert json.loads(data["GPU_NODE_SELECTOR"]) == {"pool": "gpu"}
    assert data["GPU_TOLERATION_KEY"] == "nvidia.com/gpu"
    assert data["GPU_REQUEST"] == "0"
    assert data["AWS_ENDPOINT_URL"] == f"http://{RELEASE}-minio:9000"
    assert data["OBJECT_STORE_SECRET_NAME"] == f"{RELEASE}-object-store"
    assert data["WAREHOUSE_SECRET_NAME"] == f"{RELEASE}-warehouse"
    assert data["FEATURES_IMAGE"] == "mlplatform/features:kind"
    for name in ("minio", "postgresql", "mlflow"):
        one(kind_objects, "Deployment", f"{RELEASE}-{name}")
    # what `kind load docker-image` provides must never be pulled
    for _, obj in _our_workloads(kind_objects):
        for c in containers(pod_spec(obj)):
            if c["image"].startswith("mlplatform/"):
                assert c["imagePullPolicy"] == "Never"


def test_kind_cluster_config_matches_the_kind_gpu_pool(kind_values):
    config = yaml.safe_load((REPO_ROOT / "kind" / "kind-config.yaml").read_text())
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    assert [n["role"] for n in config["nodes"]].count("control-plane") == 1 and len(workers) == 2
    gpu_nodes = [n for n in workers if "labels" in n]
    assert len(gpu_nodes) == 1
    gpu = gpu_nodes[0]
    assert gpu["labels"] == kind_values["gpuPool"]["nodeSelector"]
    taints = [
        t
        for patch in gpu["kubeadmConfigPatches"]
        for t in yaml.safe_load(patch)["nodeRegistration"]["taints"]
    ]
    assert {
        "key": kind_values["gpuPool"]["tolerationKey"],
        "value": "present",
        "effect": "NoSchedule",
    } in taints


def test_kind_test_script_parses():
    script = REPO_ROOT / "kind" / "kind-test.sh"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    result = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], check=False, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


# --- MLflow and secrets -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects"])
def test_mlflow_takes_its_backend_uri_from_a_secret_by_reference(variant, request):
    objects: Objects = request.getfixturevalue(variant)
    mlflow = one(objects, "Deployment", f"{RELEASE}-mlflow")
    (container,) = pod_spec(mlflow)["containers"]
    env = env_of(container)
    ref = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    expected = "mlplatform-mlflow-backend" if variant == "default_objects" else f"{RELEASE}-mlflow-backend"
    assert ref == {"name": expected, "key": "uri"}
    assert "value" not in env["MLFLOW_BACKEND_STORE_URI"]
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "s3://mlplatform/mlflow"
    assert "--serve-artifacts" in container["args"]
    assert not any("://" in a for a in container["command"] + container["args"])
    allowed = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert f"{RELEASE}-mlflow" in allowed and f"{RELEASE}-mlflow:*" in allowed
    service = one(objects, "Service", f"{RELEASE}-mlflow")
    assert service["spec"]["ports"][0]["port"] == 5000


def test_no_secret_values_outside_secrets(kind_objects, kind_values):
    secrets = {
        kind_values["postgresql"]["auth"]["password"],
        kind_values["objectStore"]["secretAccessKey"],
    }
    for _, obj in kind_objects:
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        for secret in secrets:
            assert secret not in text, f"{obj['kind']}/{obj['metadata']['name']} leaks a secret"
        if obj["kind"] == "ConfigMap":
            for key, value in obj.get("data", {}).items():
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f"credentials in {key}"
                assert not re.search(r"(PASSWORD|SECRET_ACCESS_KEY|TOKEN)$", key), key
    # and the Secrets hold what the consumers expect
    warehouse = one(kind_objects, "Secret", f"{RELEASE}-warehouse")["stringData"]["uri"]
    assert warehouse.startswith("postgresql+psycopg://mlplatform:") and warehouse.endswith("/warehouse")
    store = one(kind_objects, "Secret", f"{RELEASE}-object-store")["stringData"]
    assert set(store) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


# --- Airflow wiring ---------------------------------------------------------------------------


def test_airflow_values_wire_our_settings_into_every_airflow_container(chart):
    airflow = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())["airflow"]
    assert airflow["executor"] in {"KubernetesExecutor", "LocalExecutor"}
    env_from = yaml.safe_load(airflow["extraEnvFrom"].replace("{{ .Release.Name }}", RELEASE))
    names = {(next(iter(e)), e[next(iter(e))]["name"]) for e in env_from}
    assert ("configMapRef", f"{RELEASE}-pipeline-settings") in names
    assert ("secretRef", f"{RELEASE}-object-store") in names
    assert airflow["migrateDatabaseJob"]["useHelmHooks"] is False  # else `helm --wait` deadlocks
    assert airflow["dags"]["gitSync"]["subPath"] == "dags"


def test_kind_airflow_uses_our_postgresql_and_the_mounted_dags(kind_values):
    airflow = kind_values["airflow"]
    assert airflow["postgresql"]["enabled"] is False
    assert airflow["data"]["metadataConnection"]["host"] == f"{RELEASE}-postgresql"
    assert airflow["data"]["metadataConnection"]["db"] in kind_values["postgresql"]["databases"]
    assert airflow["data"]["metadataConnection"]["pass"] == kind_values["postgresql"]["auth"]["password"]
    assert airflow["dags"]["persistence"]["existingClaim"] == "mlplatform-dags"
    claim = [
        d
        for d in yaml.safe_load_all((REPO_ROOT / "kind" / "dags-volume.yaml").read_text())
        if d and d["kind"] == "PersistentVolumeClaim"
    ]
    assert [c["metadata"]["name"] for c in claim] == ["mlplatform-dags"]


def test_pools_hook_upserts_gpu_pool(kind_objects_with_airflow, kind_values):
    job = one(kind_objects_with_airflow, "Job", f"{RELEASE}-airflow-pools")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = pod_spec(job)["containers"]
    script = container["args"][0]
    assert "airflow pools set gpu_pool" in script and "--include-deferred" in script
    assert "airflow db check-migrations" in script
    env = env_of(container)
    assert env["GPU_POOL_SLOTS"]["value"] == str(kind_values["gpuPool"]["slots"])
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-metadata",
        "key": "connection",
    }
    assert container["image"] == "apache/airflow:3.3.2-python3.11"


def test_pools_hook_absent_without_airflow(kind_objects):
    assert not find(kind_objects, "Job", f"{RELEASE}-airflow-pools")
    assert one(kind_objects, "Job", f"{RELEASE}-create-bucket")

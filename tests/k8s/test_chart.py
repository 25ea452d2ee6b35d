"""Chart tests: render with the real Helm engine, validate every object against the Kubernetes
schema, then assert with small queries (apache/airflow helm-tests style)."""

from __future__ import annotations

import base64
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
from chart_queries import (
    WORKLOAD_KINDS,
    containers,
    find,
    keys_of,
    one,
    pipeline_settings,
    pod_spec,
    pods,
    references,
    restricted_violations,
)
from fake_kube_api import fake_kube_api
from k8s_schema import K8sSchemaError, validate_k8s_object

REPO_ROOT = Path(__file__).resolve().parents[2]
Objects = list[tuple[str, dict[str, Any]]]
RELEASE = "mlplatform"
NAMESPACE = "mlplatform"
OURS = "mlplatform/templates/"
DIGEST = "sha256:" + "ab" * 32
PROJECT_VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
# The Secrets the chart generates once (airflowSecrets.generate) and keeps across upgrades.
GENERATED_SECRETS = {
    "mlplatform-airflow-jwt",
    "mlplatform-airflow-api-secret-key",
    "mlplatform-airflow-fernet-key",
    f"{RELEASE}-airflow-admin",
}


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


# The official chart version these tests render: the pin must be the tested one.
TESTED_AIRFLOW_CHART = "1.21.0"


def test_airflow_dependency_is_the_pinned_official_chart(chart, subchart):
    airflow = chart.airflow_dependency()
    assert airflow["repository"] == "https://airflow.apache.org"
    assert airflow["version"] == TESTED_AIRFLOW_CHART, "pin the version the tests render"
    assert airflow["condition"] == "airflow.enabled"
    # what the tests render is that archive, as `helm dependency build` would have put it there
    assert subchart.name == f"airflow-{TESTED_AIRFLOW_CHART}.tgz"
    with helm.Chart.load(subchart) as official:
        assert (official.name, official.version) == ("airflow", TESTED_AIRFLOW_CHART)
    assert [(d["name"], d["version"], d["status"]) for d in helm.dependency_list(chart.CHART_DIR)] == [
        ("airflow", TESTED_AIRFLOW_CHART, "ok")
    ]


def test_the_official_chart_is_rendered(default_objects, kind_objects):
    for objects in (default_objects, kind_objects):
        official = {f"{o['kind']}/{o['metadata']['name']}" for src, o in objects if "/charts/airflow/" in src}
        assert {
            f"Deployment/{RELEASE}-api-server",
            f"Deployment/{RELEASE}-scheduler",
            f"Deployment/{RELEASE}-dag-processor",
            f"StatefulSet/{RELEASE}-triggerer",
            f"Job/{RELEASE}-run-airflow-migrations",
            f"ConfigMap/{RELEASE}-config",
        } <= official


@pytest.mark.parametrize("variant", ["default", "kind"])
def test_lint_is_clean(chart, kind_values_file, variant):
    values = kind_values_file if variant == "kind" else {}
    report = helm.lint(chart.CHART_DIR, values, strict=True, namespace=NAMESPACE)
    problems = [m["error"] for m in report["messages"] if m["severity"] >= 2]
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
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"name": "s", "port": 80, "weigth": 1}]}],
        },
    }
    with pytest.raises(K8sSchemaError, match="weigth"):
        validate_k8s_object(route)
    with pytest.raises(K8sSchemaError, match="Gateway"):
        validate_k8s_object(
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "g"}}
        )


@pytest.mark.parametrize(
    "variant", ["default_objects", "kind_objects", "kind_objects_without_airflow", "everything"]
)
def test_every_rendered_object_is_valid_kubernetes(variant, request, render):
    if variant == "everything":  # serving in A/B mode behind the HTTPRoute (a custom resource)
        gateway = {"enabled": True, "parentRefs": [{"name": "web"}], "hostnames": ["churn.example.com"]}
        objects = render({"serving": {"abTest": {"enabled": True}, "route": gateway}})
        assert find(objects, "HTTPRoute")
    else:
        objects = request.getfixturevalue(variant)
    assert len(objects) >= 6
    for _, obj in objects:
        validate_k8s_object(obj)
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE
    # the KubernetesExecutor's worker pod, which the chart ships inside a ConfigMap
    for where, spec in pods(objects).items():
        if where.startswith("ConfigMap/"):
            validate_k8s_object(
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"}, "spec": spec}
            )


def _our_workloads(objects: Objects):
    return [(src, o) for src, o in objects if src.startswith(OURS) and o["kind"] in WORKLOAD_KINDS]


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects"])
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


# Pods of the release allowed to miss the restricted Pod Security Standard, each with its reason.
# Empty: every pod, the official chart's included, meets it. Keep a reason beside any addition.
PSS_EXCEPTIONS: dict[str, str] = {}


def with_everything(base: dict[str, Any]) -> dict[str, Any]:
    """`base` with every optional pod of ours on: serving in A/B mode."""
    return {**base, "serving": {**base.get("serving", {}), "enabled": True, "abTest": {"enabled": True}}}


@pytest.mark.parametrize("variant", ["default", "kind"])
def test_every_pod_meets_the_restricted_pod_security_standard(render, kind_values_file, variant):
    objects = render(with_everything(kind_values_file if variant == "kind" else {}))
    all_pods = pods(objects)
    assert (
        f"Deployment/{RELEASE}-statsd" in all_pods
        and f"ConfigMap/{RELEASE}-config:pod_template_file.yaml" in all_pods
    )
    violations = {
        where: problems
        for where, spec in all_pods.items()
        if where not in PSS_EXCEPTIONS and (problems := restricted_violations(spec))
    }
    assert violations == {}
    assert set(PSS_EXCEPTIONS) <= set(all_pods), "an exception for a pod the chart no longer renders"


def test_restricted_check_catches_what_the_standard_forbids():
    good = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
    }
    assert restricted_violations(good) == []

    def broken(mutate) -> list[str]:
        spec = json.loads(json.dumps(good))
        mutate(spec)
        return restricted_violations(spec)

    container = lambda s: s["containers"][0]
    assert broken(lambda s: s.update(hostNetwork=True)) == ["hostNetwork"]
    assert broken(lambda s: s.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]))
    assert broken(lambda s: s["securityContext"].pop("runAsNonRoot"))
    assert broken(lambda s: s["securityContext"].pop("seccompProfile"))
    assert broken(lambda s: container(s)["securityContext"].pop("allowPrivilegeEscalation"))
    assert broken(lambda s: container(s)["securityContext"].update(capabilities={"drop": ["NET_RAW"]}))
    assert broken(lambda s: container(s)["securityContext"].update(privileged=True))
    assert broken(lambda s: container(s).update(ports=[{"containerPort": 80, "hostPort": 80}]))
    assert broken(lambda s: s.update(initContainers=[{"name": "i", "securityContext": {"runAsUser": 65533}}]))


AIRFLOW_COMPONENTS = (
    "api-server",
    "scheduler",
    "dag-processor",
    "triggerer",
    "create-user",
    "run-airflow-migrations",
)


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects"])
def test_airflow_pods_keep_the_official_uid_and_fs_group(variant, request):
    # A securityContexts.pod without them replaces the official chart's runAsUser 50000 / fsGroup 0:
    # the image's files and the triggerer's and workers' volumes are group 0.
    all_pods = pods(request.getfixturevalue(variant))
    airflow_pods = {
        where: spec
        for where, spec in all_pods.items()
        if where.startswith("ConfigMap/")
        or where.split("/", 1)[1] in {f"{RELEASE}-{c}" for c in AIRFLOW_COMPONENTS}
    }
    assert len(airflow_pods) == len(AIRFLOW_COMPONENTS) + 1
    for where, spec in airflow_pods.items():
        sc = spec["securityContext"]
        assert (sc.get("runAsUser"), sc.get("fsGroup")) == (50000, 0), where


def _service_account_of(objects: Objects, kind: str, name: str) -> str:
    return pod_spec(one(objects, kind, name))["serviceAccountName"]


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects"])
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
    assert all(s["kind"] == "ServiceAccount" and s["namespace"] == NAMESPACE for s in binding["subjects"])
    # The identities the Airflow pods really run as: the KubernetesExecutor's worker pod (which
    # starts the step pods), the triggerer (which watches the deferred ones) and the scheduler.
    worker = pods(objects)[f"ConfigMap/{RELEASE}-config:pod_template_file.yaml"]["serviceAccountName"]
    assert {s["name"] for s in binding["subjects"]} == {
        worker,
        _service_account_of(objects, "StatefulSet", f"{RELEASE}-triggerer"),
        _service_account_of(objects, "Deployment", f"{RELEASE}-scheduler"),
    }


def test_rbac_follows_the_official_charts_service_account_values(render):
    objects = render(
        {
            "airflow": {
                "workers": {"serviceAccount": {"name": "team-worker"}},
                "triggerer": {"serviceAccount": {"create": False, "name": "shared-triggerer"}},
            }
        }
    )
    binding = one(objects, "RoleBinding", f"{RELEASE}-pod-launcher")
    assert {s["name"] for s in binding["subjects"]} == {
        "team-worker",
        "shared-triggerer",
        f"{RELEASE}-airflow-scheduler",
    }
    one(objects, "ServiceAccount", "team-worker")


@pytest.mark.parametrize("variant", ["default_objects", "kind_objects"])
def test_every_binding_subject_and_pod_identity_exists(variant, request):
    objects: Objects = request.getfixturevalue(variant)
    accounts = {o["metadata"]["name"] for o in find(objects, "ServiceAccount")}
    roles = {o["metadata"]["name"] for o in find(objects, "Role")}
    bindings = find(objects, "RoleBinding")
    assert len(bindings) >= 2, "ours and the official chart's"
    for binding in bindings:
        where = f"RoleBinding/{binding['metadata']['name']}"
        assert binding["roleRef"]["kind"] == "Role" and binding["roleRef"]["name"] in roles, where
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE, where
            assert subject["name"] in accounts, (
                f"{where}: ServiceAccount {subject['name']} is not in the release"
            )
    for where, spec in pods(objects).items():
        assert spec.get("serviceAccountName", "default") in accounts | {"default"}, where


def user_provided(values: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the objects the values name as the user's own (created out of band)."""
    af = values["airflow"]
    provided = {
        ("Secret", name)
        for name in (
            values["warehouse"]["existingSecret"],
            values["mlflow"]["backendStore"]["existingSecret"],
            values["objectStore"]["existingSecret"],
            (af.get("data") or {}).get("metadataSecretName"),
            *values["images"]["pullSecrets"],
        )
        if name
    }
    if not values["airflowSecrets"]["generate"]:
        provided |= {
            ("Secret", af["jwtSecretName"]),
            ("Secret", af["apiSecretKeySecretName"]),
            ("Secret", af["fernetKeySecretName"]),
            ("Secret", f"{RELEASE}-airflow-admin"),
        }
    return provided


USER_SECRETS = {
    "warehouse": {"existingSecret": "corp-warehouse"},
    "mlflow": {"backendStore": {"existingSecret": "corp-mlflow-db"}},
    "objectStore": {"existingSecret": "corp-s3"},
    "images": {"pullSecrets": ["corp-registry"]},
    "airflowSecrets": {"generate": False},
    "airflow": {"data": {"metadataSecretName": "corp-airflow-db"}},
}


@pytest.mark.parametrize("variant", ["default", "kind", "user-secrets"])
def test_every_secret_and_configmap_a_pod_uses_exists_or_is_the_users(
    chart, render, kind_values_file, variant
):
    values = {"default": {}, "kind": kind_values_file, "user-secrets": USER_SECRETS}[variant]
    values = with_everything(values)
    objects = render(values)
    coalesced = chart.coalesce(values)
    rendered = {
        (o["kind"], o["metadata"]["name"]): o for _, o in objects if o["kind"] in {"Secret", "ConfigMap"}
    }
    provided = user_provided(coalesced)
    missing = []
    for where, spec in pods(objects).items():
        for kind, name, key, optional in sorted(references(spec), key=str):
            if (kind, name) in rendered:
                if key is not None and key not in keys_of(rendered[(kind, name)]):
                    missing.append(f"{where}: {kind} {name} has no key {key}")
            elif not optional and (kind, name) not in provided:
                missing.append(f"{where}: {kind} {name} is neither rendered nor user-provided")
    assert missing == []
    if variant == "user-secrets":
        # each name the user gave is what the pods use, and the chart renders none of them
        # (the warehouse Secret is for the step pods the DAGs launch: the settings name it)
        used = {(kind, name) for spec in pods(objects).values() for kind, name, _, _ in references(spec)}
        assert provided - {("Secret", "corp-warehouse")} <= used
        assert pipeline_settings(objects)["WAREHOUSE_SECRET_NAME"] == "corp-warehouse"
        assert not provided & set(rendered)


def test_step_service_account_mounts_no_token(default_objects):
    sa = one(default_objects, "ServiceAccount", f"{RELEASE}-step")
    assert sa["automountServiceAccountToken"] is False
    assert pipeline_settings(default_objects)["STEP_SERVICE_ACCOUNT"] == sa["metadata"]["name"]


# --- bad values fail at render ----------------------------------------------------------------


# Our schema and check-values.yaml refuse these whatever the official chart: rendered without it (fast).


def test_unknown_key_is_a_schema_error(render):
    message = helm_error(render, {"mlflow": {"replica": 2}}, with_airflow=False)
    assert "additional properties 'replica' not allowed" in message
    assert "additional properties" in helm_error(render, {"surprise": True}, with_airflow=False)


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
    assert expected in helm_error(render, values, with_airflow=False)


def test_check_values_fails_on_bad_digest_even_past_the_schema(chart):
    # The schema pattern catches it first; check-values.yaml is the second line of defence for
    # renders that skip schema validation, so exercise the template on its own.
    text = (chart.CHART_DIR / "templates" / "check-values.yaml").read_text()
    assert "sha256:[a-f0-9]{64}" in text and "fail" in text


# --- images -----------------------------------------------------------------------------------


def test_digest_overrides_tag(render):
    objects = render(
        {
            "images": {"features": {"tag": "1.2.3", "digest": DIGEST}, "trainer": {"tag": "1.2.3"}},
            "mlflow": {"image": {"tag": "1.2.3", "digest": DIGEST}},
        }
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
    # production defaults reference the user's Secrets; the chart makes only Airflow's random keys
    # (and the official chart's Celery broker URL, which it always renders; no pod reads it here)
    secrets = {s["metadata"]["name"] for s in find(default_objects, "Secret")}
    assert secrets == GENERATED_SECRETS | {f"{RELEASE}-broker-url"}


def test_kind_values_render_the_gpu_pool_without_gpus(kind_objects, kind_values):
    data = pipeline_settings(kind_objects)
    assert json.loads(data["GPU_NODE_SELECTOR"]) == {"pool": "gpu"}
    assert data["GPU_TOLERATION_KEY"] == "nvidia.com/gpu"
    assert data["GPU_REQUEST"] == "0"
    assert data["AWS_ENDPOINT_URL"] == f"http://{RELEASE}-minio:9000"
    assert data["OBJECT_STORE_SECRET_NAME"] == f"{RELEASE}-object-store"
    assert data["WAREHOUSE_SECRET_NAME"] == f"{RELEASE}-warehouse"
    assert data["FEATURES_IMAGE"] == f"mlplatform/features:{PROJECT_VERSION}"
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


def test_pools_hook_upserts_gpu_pool(kind_objects, kind_values):
    job = one(kind_objects, "Job", f"{RELEASE}-airflow-pools")
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
    # kind: the Airflow image `make images` built, as every Airflow pod runs it
    assert container["image"] == f"mlplatform/airflow:{PROJECT_VERSION}"
    assert (
        container["image"]
        == pod_spec(one(kind_objects, "Deployment", f"{RELEASE}-scheduler"))["containers"][0]["image"]
    )


def test_pools_hook_reads_the_users_metadata_secret(default_objects):
    (container,) = pod_spec(one(default_objects, "Job", f"{RELEASE}-airflow-pools"))["containers"]
    ref = env_of(container)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mlplatform-airflow-metadata", "key": "connection"}


def test_pools_hook_absent_without_airflow(kind_objects_without_airflow):
    assert not find(kind_objects_without_airflow, "Job", f"{RELEASE}-airflow-pools")
    assert not find(kind_objects_without_airflow, "RoleBinding"), "no Airflow ServiceAccounts to bind"
    assert one(kind_objects_without_airflow, "Job", f"{RELEASE}-create-bucket")


# --- Airflow's keys and passwords: generated once, none by default ------------------------------

# The variables through which Airflow reads the keys our Secrets hold.
AIRFLOW_KEYS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY")


def _key_secrets(objects: Objects) -> dict[str, str]:
    """{Airflow key variable: name of the Secret the API server reads it from}."""
    (server,) = [
        c
        for c in pod_spec(one(objects, "Deployment", f"{RELEASE}-api-server"))["containers"]
        if c["name"] == "api-server"
    ]
    env = env_of(server)
    return {var: env[var]["valueFrom"]["secretKeyRef"]["name"] for var in AIRFLOW_KEYS}


def test_airflow_keys_come_from_secrets_generated_once(chart, default_objects):
    secrets = {o["metadata"]["name"]: (src, o) for src, o in default_objects if o["kind"] == "Secret"}
    assert set(_key_secrets(default_objects).values()) | {f"{RELEASE}-airflow-admin"} == GENERATED_SECRETS
    for name in GENERATED_SECRETS:
        src, secret = secrets[name]
        assert src == OURS + "airflow-secrets.yaml", f"{name} comes from {src}"
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert all(len(base64.b64decode(v)) >= 24 for v in secret["data"].values()), name
    # so another render -- every `helm upgrade`, a new serving.rolloutToken included -- leaves every
    # Airflow pod as it was: no new JWT key restarting the API server and scheduler
    upgrade = chart.render_objects({"serving": {"rolloutToken": "7"}})
    for kind, name in (
        ("Deployment", "api-server"),
        ("Deployment", "scheduler"),
        ("Deployment", "dag-processor"),
        ("StatefulSet", "triggerer"),
    ):
        before = one(default_objects, kind, f"{RELEASE}-{name}")["spec"]["template"]
        assert one(upgrade, kind, f"{RELEASE}-{name}")["spec"]["template"] == before, name


def test_generated_secrets_are_kept_across_upgrades(chart, default_objects):
    # The cluster holds what the install created (less the admin Secret, deleted by hand):
    # `helm upgrade` renders against it, so lookup must return the installed keys.
    installed = {
        (NAMESPACE, o["metadata"]["name"]): {**o, "metadata": {**o["metadata"], "namespace": NAMESPACE}}
        for o in find(default_objects, "Secret")
        if o["metadata"]["name"] != f"{RELEASE}-airflow-admin"
    }
    values = {"airflow": {"enabled": True}, "serving": {"rolloutToken": "7"}}
    with (
        fake_kube_api(installed) as kubeconfig,
        helm.Config(kubeconfig_content=kubeconfig, namespace=NAMESPACE) as cluster,
        helm.Chart.load(chart.CHART_DIR) as loaded,
    ):
        manifests = cluster.render(loaded, values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    upgraded = [
        ("", d)
        for path, text in manifests.items()
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]
    for var, name in _key_secrets(upgraded).items():
        assert one(upgraded, "Secret", name)["data"] == installed[(NAMESPACE, name)]["data"], f"{var} changed"
    # a Secret the cluster lacks is generated afresh
    admin = one(upgraded, "Secret", f"{RELEASE}-airflow-admin")["data"]["password"]
    assert admin != one(default_objects, "Secret", f"{RELEASE}-airflow-admin")["data"]["password"]


def test_production_values_ship_no_default_password(chart, default_objects):
    values = chart.coalesce({})
    assert values["airflow"]["postgresql"]["enabled"] is False, "no bundled PostgreSQL with password postgres"
    assert not find(default_objects, "Secret", f"{RELEASE}-metadata"), (
        "no metadata connection to postgres:postgres"
    )
    for spec in pods(default_objects).values():
        for _, name, key, _ in references(spec):
            if key == "connection":
                assert (
                    name == values["airflow"]["data"]["metadataSecretName"] == "mlplatform-airflow-metadata"
                )
    # the first admin: no admin/admin, the password is the generated Secret's
    job = pod_spec(one(default_objects, "Job", f"{RELEASE}-create-user"))
    (container,) = job["containers"]
    assert not {"-p", "--password"} & set(container["args"][3:]), "no password in the Job's arguments"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in job["volumes"]}
    assert volumes["first-admin"]["secret"]["secretName"] == f"{RELEASE}-airflow-admin"
    assert f'--password "$(cat {mounts["first-admin"]}/password)"' in container["args"][2]
    password = base64.b64decode(
        one(default_objects, "Secret", f"{RELEASE}-airflow-admin")["data"]["password"]
    )
    assert len(password) == 24 and password != b"admin"
    text = yaml.safe_dump_all([o for _, o in default_objects])
    assert "postgres:postgres@" not in text and "admin:admin" not in text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"airflow": {"data": {"metadataSecretName": None}}},
            "airflow.data.metadataSecretName: name the Secret (key `connection`)",
        ),
        (
            {"airflow": {"data": {"metadataSecretName": None, "metadataConnection": {"host": "db"}}}},
            "the chart's default password `postgres` is refused",
        ),
        (
            {"airflow": {"postgresql": {"enabled": True}}},
            "airflow.postgresql.enabled: set airflow.postgresql.auth.postgresPassword",
        ),
    ],
)
def test_default_database_passwords_are_refused(render, values, expected):
    assert expected in helm_error(render, values)


def test_users_own_metadata_password_is_accepted(render):
    own = {
        "airflow": {
            "data": {"metadataSecretName": None, "metadataConnection": {"host": "db", "pass": "s3cret"}}
        }
    }
    connection = one(render(own), "Secret", f"{RELEASE}-metadata")["data"]["connection"]
    assert b":s3cret@db" in base64.b64decode(connection)


def test_generated_secrets_can_be_the_users(render):
    objects = render({"airflowSecrets": {"generate": False}})
    assert not {s["metadata"]["name"] for s in find(objects, "Secret")} & GENERATED_SECRETS
    assert set(_key_secrets(objects).values()) == GENERATED_SECRETS - {f"{RELEASE}-airflow-admin"}


# --- git-sync -------------------------------------------------------------------------------------


def test_git_sync_follows_the_ref_git_sync_v4_reads(chart, default_objects):
    git_sync = chart.coalesce({})["airflow"]["dags"]["gitSync"]
    assert git_sync["ref"] == "main"
    synced = {
        f"{where}/{c['name']}": env_of(c)
        for where, spec in pods(default_objects).items()
        for c in containers(spec)
        if c["name"].startswith("git-sync")
    }
    # the DAG processor and the triggerer (sidecar + init) and the worker pod (init)
    assert len(synced) == 5
    for where, env in synced.items():
        assert env["GITSYNC_REF"]["value"] == "main", where
        assert env["GITSYNC_REPO"]["value"] == git_sync["repo"], where


# --- kind: the container tier's images ------------------------------------------------------------


def test_kind_runs_the_images_make_images_builds(kind_objects, monkeypatch):
    # the container tier's step images: what the Settings resolve to with no image configured
    from mlplatform.settings import load_settings

    for var in (
        "FEATURES_IMAGE",
        "TRAINER_IMAGE",
        "FEATURES_IMAGE_DIGEST",
        "TRAINER_IMAGE_DIGEST",
        "CODE_VERSION",
    ):
        monkeypatch.delenv(var, raising=False)
    container_tier = load_settings()
    settings = pipeline_settings(kind_objects)
    assert (settings["FEATURES_IMAGE"], settings["TRAINER_IMAGE"]) == (
        container_tier.features_image,
        container_tier.trainer_image,
    )
    makefile = (REPO_ROOT / "Makefile").read_text()
    names = re.search(r"^IMAGE_NAMES := (.+)$", makefile, flags=re.MULTILINE).group(1).split()
    built = {f"mlplatform/{name}:{PROJECT_VERSION}" for name in names}
    used = {pipeline_settings(kind_objects)[var] for var in ("FEATURES_IMAGE", "TRAINER_IMAGE")}
    for spec in pods(kind_objects).values():
        for c in containers(spec):
            if c["image"].startswith("mlplatform/"):
                used.add(c["image"])
                assert c["imagePullPolicy"] == "Never", c["name"]
    assert used == built
    script = (REPO_ROOT / "kind" / "kind-test.sh").read_text()
    assert 'make -C "${REPO_ROOT}" --no-print-directory images IMAGE_TAG="${IMAGE_TAG}"' in script
    assert re.search(r"^IMAGE_NAMES=\((.+)\)$", script, flags=re.MULTILINE).group(1).split() == names
    assert "pyproject.toml" in script.split("IMAGE_TAG=", 1)[1].splitlines()[0], (
        "tagged with the project version"
    )

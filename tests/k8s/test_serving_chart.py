"""Chart tests for model serving: an MLflow model server per registry alias
(templates/serving.yaml) and the weighted Gateway API HTTPRoute for A/B tests
(templates/serving-route.yaml). Same approach as test_chart.py: render with the real Helm engine,
validate every object (core kinds with kubernetes-validate, the HTTPRoute CRD with
schemas/httproute-v1.json), then assert with small queries."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from chart_queries import find, one
from k8s_schema import validate_k8s_object

Objects = list[tuple[str, dict[str, Any]]]
RELEASE = "mlplatform"
NAMESPACE = "mlplatform"
DIGEST = "sha256:" + "cd" * 32
HTTPROUTE_SCHEMA = json.loads((Path(__file__).parent / "schemas" / "httproute-v1.json").read_text())
GATEWAY = [{"name": "web", "namespace": "gateway-system", "sectionName": "http"}]
AB = {"serving": {"abTest": {"enabled": True}}}


def routed(challenger_weight: int | None = None, **route: Any) -> dict[str, Any]:
    """Values with the HTTPRoute on; A/B mode when challenger_weight is given."""
    serving: dict[str, Any] = {"route": {"enabled": True, "parentRefs": GATEWAY, **route}}
    if challenger_weight is not None:
        serving["abTest"] = {"enabled": True, "challengerWeight": challenger_weight}
    return {"serving": serving}


def serving_objects(objects: Objects, kind: str) -> dict[str, dict[str, Any]]:
    """{alias: object} of the serving objects of `kind`, keyed by their mlplatform/alias label."""
    found = [
        o
        for o in find(objects, kind)
        if o["metadata"]["labels"].get("app.kubernetes.io/component") == "serving"
    ]
    by_alias = {o["metadata"]["labels"]["mlplatform/alias"]: o for o in found}
    assert len(by_alias) == len(found), "one object per alias"
    return by_alias


def model_server(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def model_uri(container: dict[str, Any]) -> str:
    (uri,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--model-uri=")]
    return uri


def route_of(objects: Objects) -> dict[str, Any]:
    return one(objects, "HTTPRoute", f"{RELEASE}-serving")


def validate_httproute(obj: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(HTTPROUTE_SCHEMA).validate(obj)


def with_serving(values: dict[str, Any], **serving: Any) -> dict[str, Any]:
    """`values` with serving turned on (values-kind.yaml starts it off) and `serving` merged in."""
    return {**values, "serving": {**values.get("serving", {}), "enabled": True, **serving}}


@pytest.fixture(scope="module")
def render(render):
    """Serving is our templates alone: rendered without the official chart here (a render with it
    takes seconds); test_chart.py checks the whole release with serving on."""
    return functools.partial(render, with_airflow=False)


@pytest.fixture(scope="module")
def kind_serving_objects(render, kind_values_file: dict[str, Any]) -> Objects:
    """Kind after the first promotion: values-kind.yaml with serving.enabled=true."""
    return render(with_serving(kind_values_file))


def helm_error(render, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as err:
        render(values)
    return str(err.value)


# --- Deployments and Services per alias ----------------------------------------------------------


def test_default_serves_the_champion_only(default_objects):
    deployments = serving_objects(default_objects, "Deployment")
    services = serving_objects(default_objects, "Service")
    assert set(deployments) == set(services) == {"champion"}
    assert deployments["champion"]["metadata"]["name"] == f"{RELEASE}-serving-champion"
    assert services["champion"]["metadata"]["name"] == f"{RELEASE}-serving-champion"
    assert deployments["champion"]["spec"]["replicas"] == 2
    assert not find(default_objects, "HTTPRoute"), "route.enabled defaults to false"
    for obj in (*deployments.values(), *services.values()):
        validate_k8s_object(obj)


def test_ab_mode_adds_a_challenger_with_its_own_replicas(render):
    objects = render({"serving": {"abTest": {"enabled": True}, "replicas": {"champion": 3, "challenger": 1}}})
    deployments = serving_objects(objects, "Deployment")
    services = serving_objects(objects, "Service")
    assert set(deployments) == set(services) == {"champion", "challenger"}
    assert deployments["champion"]["spec"]["replicas"] == 3
    assert deployments["challenger"]["spec"]["replicas"] == 1
    for obj in (*deployments.values(), *services.values()):
        validate_k8s_object(obj)
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_serving_disabled_renders_no_serving_objects(render):
    objects = render({"serving": {"enabled": False}})
    assert not serving_objects(objects, "Deployment") and not serving_objects(objects, "Service")
    assert not any("serving" in o["metadata"]["name"] for _, o in objects)


@pytest.mark.parametrize("model_name", ["customer-churn", "fraud-score"])
def test_each_alias_serves_its_registry_alias_never_latest(render, model_name):
    objects = render({**AB, "pipeline": {"registeredModelName": model_name}})
    for alias, deployment in serving_objects(objects, "Deployment").items():
        container = model_server(deployment)
        uri = model_uri(container)
        assert uri == f"models:/{model_name}@{alias}"
        assert "latest" not in " ".join(container["command"] + container["args"]).lower()
        assert not re.search(rf"models:/{re.escape(model_name)}/\d+", uri), (
            "a pinned version ignores alias moves"
        )


def test_server_command_parses_with_the_mlflow_cli(default_objects):
    """The rendered command line is accepted by the installed `mlflow models serve` (same MLflow
    as the trainer image): option names and the env manager value are real, nothing starts."""
    from mlflow.models.cli import serve

    container = model_server(serving_objects(default_objects, "Deployment")["champion"])
    assert container["command"] == ["mlflow", "models", "serve"]
    params = serve.make_context("serve", list(container["args"])).params
    assert params["model_uri"] == "models:/customer-churn@champion"
    assert params["host"] == "0.0.0.0"
    assert int(params["port"]) == container["ports"][0]["containerPort"] == 8080
    assert params["env_manager"] == "local", "the trainer image already holds the model's dependencies"


def test_image_is_the_trainer_image_and_digest_overrides_tag(render):
    objects = render(
        {**AB, "images": {"trainer": {"tag": "1.2.3", "digest": DIGEST, "pullPolicy": "Always"}}}
    )
    trainer_image = one(objects, "ConfigMap", f"{RELEASE}-pipeline-settings")["data"]["TRAINER_IMAGE"]
    assert trainer_image == f"ghcr.io/your-org/mlplatform-trainer@{DIGEST}"
    for deployment in serving_objects(objects, "Deployment").values():
        container = model_server(deployment)
        assert container["image"] == trainer_image
        assert container["imagePullPolicy"] == "Always"
    tagged = render({"images": {"trainer": {"tag": "1.2.3"}}})
    assert model_server(serving_objects(tagged, "Deployment")["champion"])["image"].endswith("trainer:1.2.3")


def test_probes_hit_the_model_servers_ping_on_its_port(default_objects):
    deployment = serving_objects(default_objects, "Deployment")["champion"]
    container = model_server(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in {"/ping", "/health"}, probe
        assert ports[get["port"]] == 8080, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_each_service_selects_only_its_alias_pods(render):
    objects = render(AB)
    deployments = serving_objects(objects, "Deployment")
    services = serving_objects(objects, "Service")
    for alias, service in services.items():
        selector = service["spec"]["selector"].items()
        for other, deployment in deployments.items():
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"].items()
            assert (selector <= pod_labels) is (other == alias), f"{alias} Service vs {other} pods"
        deployment = deployments[alias]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        (port,) = service["spec"]["ports"]
        assert port["port"] == 8080
        container_ports = {p["name"] for p in model_server(deployment)["ports"]}
        assert port["targetPort"] in container_ports
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "serving" and labels["mlplatform/alias"] == alias


def test_rollout_token_rolls_the_pods(chart, render):
    before = serving_objects(render({}), "Deployment")["champion"]["spec"]["template"]
    # a render of its own, not the shared one
    again = serving_objects(chart.render_objects({}, with_airflow=False), "Deployment")["champion"]["spec"][
        "template"
    ]
    after = serving_objects(render({"serving": {"rolloutToken": "7"}}), "Deployment")["champion"]["spec"][
        "template"
    ]
    assert before == again, "the pod template must be stable between renders (no spurious rollouts)"
    assert after["metadata"]["annotations"]["mlplatform/rollout-token"] == "7"
    assert after != before, "a new token changes the pod template, so the Deployment rolls"


# --- security: restricted pods, secrets by reference -----------------------------------------------


@pytest.mark.parametrize("variant", ["default", "kind"])
def test_serving_pods_meet_the_restricted_pod_security_standard(render, kind_values_file, variant):
    base = kind_values_file if variant == "kind" else {}
    objects = render(with_serving(base, abTest={"enabled": True}))
    deployments = serving_objects(objects, "Deployment")
    assert set(deployments) == {"champion", "challenger"}
    for alias, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        pod_sc = spec["securityContext"]
        assert spec["automountServiceAccountToken"] is False, alias
        assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), alias
        assert (
            pod_sc["runAsNonRoot"] is True
            and isinstance(pod_sc["runAsUser"], int)
            and pod_sc["runAsUser"] > 0
        )
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        container = model_server(deployment)
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and not sc.get("privileged")
        volumes = {v["name"]: v for v in spec["volumes"]}
        tmp = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/tmp"]
        assert volumes[tmp] == {"name": tmp, "emptyDir": {}}
        assert env_of(container)["HOME"]["value"] == "/tmp"


def test_kind_installs_without_serving(kind_objects, kind_values):
    # kind-test.sh installs with `helm --wait` before any model exists: a server for @champion
    # could not become ready, so values-kind.yaml leaves serving off until after a promotion.
    assert kind_values["serving"]["enabled"] is False
    assert not serving_objects(kind_objects, "Deployment") and not find(kind_objects, "HTTPRoute")


def test_kind_serving_uses_the_loaded_trainer_image_and_the_in_cluster_stores(kind_serving_objects):
    deployment = serving_objects(kind_serving_objects, "Deployment")["champion"]
    container = model_server(deployment)
    settings = one(kind_serving_objects, "ConfigMap", f"{RELEASE}-pipeline-settings")["data"]
    assert container["image"] == settings["TRAINER_IMAGE"]
    assert container["image"].startswith("mlplatform/trainer:") and container["imagePullPolicy"] == "Never"
    assert deployment["spec"]["replicas"] == 1
    assert not find(kind_serving_objects, "HTTPRoute"), "kind has no Gateway API controller"


@pytest.mark.parametrize("variant", ["default_objects", "kind_serving_objects"])
def test_serving_env_points_at_mlflow_and_takes_credentials_by_reference(variant, request):
    objects: Objects = request.getfixturevalue(variant)
    settings = one(objects, "ConfigMap", f"{RELEASE}-pipeline-settings")["data"]
    mlflow_service = one(objects, "Service", f"{RELEASE}-mlflow")
    mlflow_env = env_of(model_server(one(objects, "Deployment", f"{RELEASE}-mlflow")))
    env = env_of(model_server(serving_objects(objects, "Deployment")["champion"]))
    tracking = env["MLFLOW_TRACKING_URI"]["value"]
    assert tracking == settings["MLFLOW_TRACKING_URI"]
    assert (
        tracking
        == f"http://{mlflow_service['metadata']['name']}:{mlflow_service['spec']['ports'][0]['port']}"
    )
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if settings["OBJECT_STORE_SECRET_NAME"]:
            assert "value" not in env[key]
            assert env[key]["valueFrom"] == mlflow_env[key]["valueFrom"]
            assert env[key]["valueFrom"]["secretKeyRef"] == {
                "name": settings["OBJECT_STORE_SECRET_NAME"],
                "key": key,
            }
        else:
            assert key not in env, "no Secret configured: workload identity, no static keys"
    if settings["AWS_ENDPOINT_URL"]:
        assert (
            env["AWS_ENDPOINT_URL"]["value"]
            == settings["AWS_ENDPOINT_URL"]
            == mlflow_env["AWS_ENDPOINT_URL"]["value"]
        )
    else:
        assert "AWS_ENDPOINT_URL" not in env
    assert variant == "default_objects" or settings["OBJECT_STORE_SECRET_NAME"], (
        "kind must exercise the Secret path"
    )


def test_serving_objects_hold_no_secret_values(render, kind_values_file, kind_values):
    objects = render(with_serving(kind_values_file, **routed(10)["serving"]))
    secrets = {kind_values["objectStore"]["secretAccessKey"], kind_values["postgresql"]["auth"]["password"]}
    serving = [o for _, o in objects if "serving" in o["metadata"]["name"]]
    assert {o["kind"] for o in serving} == {"Deployment", "Service", "HTTPRoute"}
    for obj in serving:
        text = yaml.safe_dump(obj)
        for secret in secrets:
            assert secret not in text, f"{obj['kind']}/{obj['metadata']['name']} leaks a secret"
    for deployment in serving_objects(objects, "Deployment").values():
        for var in model_server(deployment)["env"]:
            if re.search(r"(KEY|SECRET|PASSWORD|TOKEN)", var["name"]):
                assert set(var) == {"name", "valueFrom"}, var["name"]


# --- the weighted HTTPRoute ------------------------------------------------------------------------


def test_httproute_schema_is_strict():
    valid = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"backendRefs": [{"name": "s", "port": 80, "weight": 1}]}],
        },
    }
    jsonschema.Draft7Validator.check_schema(HTTPROUTE_SCHEMA)
    validate_httproute(valid)

    def broken(mutate) -> dict[str, Any]:
        obj = json.loads(json.dumps(valid))
        mutate(obj)
        return obj

    def backend(obj: dict[str, Any]) -> dict[str, Any]:
        return obj["spec"]["rules"][0]["backendRefs"][0]

    for bad in (
        broken(lambda o: backend(o).update(weight=1_000_001)),
        broken(lambda o: backend(o).update(weight=-1)),
        broken(lambda o: backend(o).pop("port")),  # a Service backend needs a port
        broken(lambda o: backend(o).update(prot=80)),
        broken(lambda o: o["spec"]["parentRefs"][0].pop("name")),
        broken(lambda o: o["spec"].update(hostnames=["Bad_Host"])),
        broken(lambda o: o.update(apiVersion="gateway.networking.k8s.io/v1beta2")),
        broken(lambda o: o["spec"].update(parentRef=[])),
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_httproute(bad)


@pytest.mark.parametrize(
    ("challenger_weight", "expected"),
    [
        (None, {"champion": 100}),
        (10, {"champion": 90, "challenger": 10}),
        (25, {"champion": 75, "challenger": 25}),
        (0, {"champion": 100, "challenger": 0}),
        (100, {"champion": 0, "challenger": 100}),
    ],
)
def test_route_splits_traffic_by_weight(render, challenger_weight, expected):
    objects = render(routed(challenger_weight))
    route = route_of(objects)
    validate_httproute(route)
    assert route["metadata"]["namespace"] == NAMESPACE
    (rule,) = route["spec"]["rules"]
    services = {s["metadata"]["name"]: s for s in serving_objects(objects, "Service").values()}
    weights = {}
    for ref in rule["backendRefs"]:
        service = services[ref["name"]]  # every backend is a rendered Service ...
        assert ref["port"] == service["spec"]["ports"][0]["port"]  # ... on its port
        weights[service["metadata"]["labels"]["mlplatform/alias"]] = ref["weight"]
    assert weights == expected
    assert sum(weights.values()) == 100
    assert len(rule["backendRefs"]) == len(services), "every alias Service is routed"


def test_default_ab_weight_is_ninety_ten(render, chart):
    defaults = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())["serving"]
    assert defaults["abTest"] == {"enabled": False, "challengerWeight": 10}
    objects = render(
        {"serving": {"abTest": {"enabled": True}, "route": {"enabled": True, "parentRefs": GATEWAY}}}
    )
    (rule,) = route_of(objects)["spec"]["rules"]
    assert [(r["name"], r["weight"]) for r in rule["backendRefs"]] == [
        (f"{RELEASE}-serving-champion", 90),
        (f"{RELEASE}-serving-challenger", 10),
    ]


def test_route_takes_parent_refs_and_hostnames_from_values(render):
    route = route_of(render(routed(hostnames=["churn.example.com", "*.models.example.com"])))
    validate_httproute(route)
    assert route["spec"]["parentRefs"] == GATEWAY
    assert route["spec"]["hostnames"] == ["churn.example.com", "*.models.example.com"]
    assert "hostnames" not in route_of(render(routed()))["spec"], "no hostnames: the listener's hosts"


def test_route_requires_parent_refs(render):
    message = helm_error(render, {"serving": {"route": {"enabled": True}}})
    assert "serving.route.parentRefs is required when serving.route.enabled is true" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"serving": {"enabled": False, "abTest": {"enabled": True}}},
            "serving.abTest.enabled needs serving.enabled",
        ),
        (
            {"serving": {"enabled": False, "route": {"enabled": True, "parentRefs": GATEWAY}}},
            "serving.route.enabled needs serving.enabled",
        ),
        ({"serving": {"abTest": {"challengerWeight": 101}}}, "/serving/abTest/challengerWeight': maximum"),
        ({"serving": {"abTest": {"challengerWeight": -1}}}, "/serving/abTest/challengerWeight': minimum"),
        ({"serving": {"abTest": {"weight": 10}}}, "additional properties 'weight' not allowed"),
        (
            {"serving": {"route": {"parentRefs": [{"namespace": "gw"}]}}},
            "/serving/route/parentRefs/0': missing property 'name'",
        ),
        ({"serving": {"route": {"hostnames": ["Churn.example.com"]}}}, "/serving/route/hostnames/0'"),
        ({"serving": {"replicas": {"champion": 0}}}, "/serving/replicas/champion': minimum"),
    ],
)
def test_bad_serving_values_are_rejected_with_a_clear_message(render, values, expected):
    assert expected in helm_error(render, values)


# --- the values contract for serving ----------------------------------------------------------------


def _nodes(node: dict[str, Any], path: str):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")


def test_serving_schema_is_closed_and_described_down_to_list_items(chart):
    schema = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    serving = schema["properties"]["serving"]
    assert "serving" in schema["required"]
    weight = serving["properties"]["abTest"]["properties"]["challengerWeight"]
    assert (weight["minimum"], weight["maximum"], weight["default"]) == (0, 100, 10)
    for path, node in _nodes(serving, "serving"):
        assert node.get("description"), f"{path}: no description"
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: additionalProperties must be false"


def test_serving_values_are_documented(chart):
    text = (chart.CHART_DIR / "values.yaml").read_text()
    documented = set(re.findall(r"^## @param (serving\.\S+)", text, flags=re.MULTILINE))
    assert {
        "serving.enabled",
        "serving.replicas.champion",
        "serving.replicas.challenger",
        "serving.rolloutToken",
        "serving.abTest.enabled",
        "serving.abTest.challengerWeight",
        "serving.route.enabled",
        "serving.route.parentRefs",
        "serving.route.hostnames",
    } <= documented
    assert (
        "rolloutToken" in text
        and "alias" in text.split("## @param serving.rolloutToken", 1)[1].splitlines()[0]
    )

"""The exact pods the DAGs would send to a cluster, checked without one.

Pods are rendered by the same operator and ``build_pod_request_obj`` that run them; each is validated
against the Kubernetes API schema and held to the placement, security and secrets rules.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from k8s_schema import validate_k8s_object

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_STEPS = {"train_trial", "train_model"}
CLUSTER_ENV = {
    "PIPELINE_RUNTIME": "kubernetes",
    "ARTIFACT_ROOT": "s3://mlplatform/artifacts",
    "MLFLOW_TRACKING_URI": "http://mlplatform-mlflow:5000",
    "OBJECT_STORE_SECRET_NAME": "mlplatform-object-store",
    "WAREHOUSE_SECRET_NAME": "mlplatform-warehouse",
    "GPU_NODE_SELECTOR": json.dumps({"cloud.google.com/gke-accelerator": "nvidia-l4"}),
    "GPU_REQUEST": "1",
}


def render(monkeypatch, **env: str) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    from devtools.render import pod_to_dict, render_pods

    for name, value in {**CLUSTER_ENV, **env}.items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return {
        (dag_id, task_id): pod_to_dict(pod)
        for dag_id, dag in bag.dags.items()
        for task_id, pod in render_pods(dag).items()
    }


@pytest.fixture(scope="module")
def cluster_pods():
    monkeypatch = pytest.MonkeyPatch()
    try:
        yield render(monkeypatch)
    finally:
        monkeypatch.undo()


def test_every_training_step_has_a_pod(cluster_pods):
    tasks = {task for dag, task in cluster_pods if dag == "ml_model_training"}
    assert tasks == {"extract", "validate_raw", "build_features", "validate_features", "train_trial",
                     "train_model", "build_champion_features", "evaluate"}


def test_pods_are_valid_kubernetes_objects(cluster_pods):
    for key, pod in cluster_pods.items():
        validate_k8s_object(pod)


def test_trainer_pods_run_on_the_gpu_pool_and_others_do_not(cluster_pods):
    for (_, task), pod in cluster_pods.items():
        spec, container = pod["spec"], pod["spec"]["containers"][0]
        resources = container["resources"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if task in GPU_STEPS:
            assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
            assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            assert env["XGB_DEVICE"] == "cuda"
        else:
            assert "nvidia.com/gpu" not in resources.get("limits", {}), task
            assert not spec.get("nodeSelector"), task
            assert not spec.get("tolerations"), task
            assert env["XGB_DEVICE"] == "cpu"


def test_every_pod_meets_the_restricted_pod_security_standard(cluster_pods):
    for key, pod in cluster_pods.items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, key
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", key
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), key
        assert spec["automountServiceAccountToken"] is False, key
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, key
            assert context["capabilities"]["drop"] == ["ALL"], key
            assert not context["capabilities"].get("add"), key
            assert context["readOnlyRootFilesystem"] is True, key
            assert context.get("privileged") in (None, False), key
        # A read-only root needs a writable scratch volume where the steps write temporary files.
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts.get("/tmp") == "scratch", key
        assert {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}} in spec["volumes"], key


def test_secrets_are_passed_by_reference_only(cluster_pods):
    for (_, task), pod in cluster_pods.items():
        env = pod["spec"]["containers"][0]["env"]
        by_name = {e["name"]: e for e in env}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in by_name[name] and by_name[name]["valueFrom"]["secretKeyRef"]["name"] == (
                "mlplatform-object-store"), (task, name)
        if "WAREHOUSE_URI" in by_name or task == "extract":
            ref = by_name["WAREHOUSE_URI"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "mlplatform-warehouse", "key": "uri"}
        if task in GPU_STEPS:
            assert "WAREHOUSE_URI" not in by_name, f"{task} does not need the warehouse"
        dumped = json.dumps(pod)
        assert "password" not in dumped.lower() and "postgresql://" not in dumped


def test_pods_carry_dag_run_and_task_labels(cluster_pods):
    for (dag_id, task), pod in cluster_pods.items():
        labels = pod["metadata"]["labels"]
        assert labels["dag_id"] == dag_id and labels["task_id"] == task
        assert labels["run_id"].startswith("manual__")
        assert labels["app.kubernetes.io/part-of"] == "mlplatform"
    assert cluster_pods[("ml_model_training", "train_trial")]["metadata"]["labels"]["map_index"] == "0"


def test_steps_write_to_run_scoped_paths_and_mapped_trials_do_not_collide(cluster_pods):
    def output(task):
        env = cluster_pods[("ml_model_training", task)]["spec"]["containers"][0]["env"]
        return next(e["value"] for e in env if e["name"] == "STEP_OUTPUT_URI")

    prefix = "s3://mlplatform/artifacts/runs/ml_model_training/manual__2026-01-04T03:00:00+00:00/"
    assert output("extract") == prefix + "extract"
    assert output("train_trial") == prefix + "train_trial/0"


def _subcommands(module: str) -> set[str]:
    import re
    import subprocess

    usage = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    choices = re.search(r"\{([a-z,-]+)\}", usage.stdout)
    if choices:
        return set(choices.group(1).split(","))
    # argparse with a metavar lists each command on its own line under the positional arguments
    return set(re.findall(r"^    ([a-z][a-z-]*)(?:\s|$)", usage.stdout, flags=re.MULTILINE))


def test_commands_are_the_image_clis(cluster_pods):
    subcommands = {module: _subcommands(module) for module in ("features", "trainer")}
    for (_, task), pod in cluster_pods.items():
        container = pod["spec"]["containers"][0]
        module = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        assert container["command"] == ["python", "-m", module], task
        assert container["image"].startswith(f"mlplatform/{module}:"), task
        assert container["args"][0] in subcommands[module], (task, container["args"][0])
    for task in GPU_STEPS | {"evaluate"}:
        assert cluster_pods[("ml_model_training", task)]["metadata"]["labels"]["app.kubernetes.io/component"] == (
            "trainer")
    evaluate = cluster_pods[("ml_model_training", "evaluate")]["spec"]["containers"][0]["args"]
    assert evaluate[evaluate.index("--challenger-version") + 1] == "7"  # rendered from the train manifest


def test_operator_settings_for_the_cluster(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    for name, value in CLUSTER_ENV.items():
        monkeypatch.setenv(name, value)
    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["ml_model_training"]
    train = dag.get_task("train_model")
    assert train.deferrable is True and train.do_xcom_push is False
    assert train.pool == "gpu_pool" and train.pool_slots == 1
    assert train.schedule_timeout_seconds >= 15 * 60, "GPU nodes need time to scale up"
    assert train.on_finish_action.value == "delete_succeeded_pod", "failed pods are kept for debugging"
    assert train.execution_timeout is not None
    assert dag.get_task("extract").pool != "gpu_pool"


def test_digest_overrides_tag_and_gpu_off_for_kind(monkeypatch):
    digest = "sha256:" + "a" * 64
    pods = render(monkeypatch, TRAINER_IMAGE="registry.example/ml/trainer:1.2.3", TRAINER_IMAGE_DIGEST=digest,
                  GPU_REQUEST="0", GPU_NODE_SELECTOR='{"pool": "gpu"}')
    trial = pods[("ml_model_training", "train_trial")]
    assert trial["spec"]["containers"][0]["image"] == f"registry.example/ml/trainer@{digest}"
    # kind: no GPU to request, but node selection and toleration are still exercised.
    assert "nvidia.com/gpu" not in trial["spec"]["containers"][0]["resources"]["limits"]
    assert trial["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert any(t["key"] == "nvidia.com/gpu" for t in trial["spec"]["tolerations"])


def test_bad_digest_is_rejected(monkeypatch):
    from mlplatform.settings import load_settings

    monkeypatch.setenv("TRAINER_IMAGE_DIGEST", "latest")
    with pytest.raises(ValueError, match="sha256"):
        load_settings()


def test_local_runtime_runs_exactly_the_rendered_pod(monkeypatch, tmp_path):
    """The local runtime executes the pod's command, args and env: nothing added, nothing dropped."""
    from airflow.dag_processing.dagbag import DagBag
    from mlplatform.steps import FEATURES, step

    from devtools.render import sample_context

    monkeypatch.setenv("PIPELINE_RUNTIME", "local")
    monkeypatch.setenv("ARTIFACT_ROOT", f"file://{tmp_path}/artifacts")
    monkeypatch.setenv("WAREHOUSE_URI", "sqlite:////tmp/from-the-local-secret-store.db")
    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["ml_model_training"]
    record = tmp_path / "record.json"
    script = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, "
              f"open({str(record)!r}, 'w'))")
    operator = step("probe", FEATURES, ["extract", "--cutoff", "{{ params.cutoff or '' }}", "--seed", "{{ params.seed }}"],
                    cmds=["python", "-c", script])
    context = sample_context(dag, "probe", -1)
    operator.render_template_fields(context, jinja_env=dag.get_template_env())
    pod = operator.build_pod_request_obj(context, dry_run=True)
    operator.execute(context)

    ran = json.loads(record.read_text())
    container = pod.spec.containers[0]
    assert ran["argv"] == container.args == ["extract", "--cutoff", "", "--seed", "42"]
    for variable in container.env:
        if variable.value_from is None and not (variable.value or "").startswith("/tmp"):
            assert ran["env"][variable.name] == variable.value, variable.name
    assert ran["env"]["WAREHOUSE_URI"] == "sqlite:////tmp/from-the-local-secret-store.db"
    assert ran["env"]["STEP_OUTPUT_URI"] == f"file://{tmp_path}/artifacts/runs/ml_model_training/" \
        "manual__2026-01-04T03:00:00+00:00/probe"
    unexpected = set(ran["env"]) - {v.name for v in container.env} - {"PATH", "LANG", "LC_ALL", "TZ",
                                                                      "SSL_CERT_FILE", "VIRTUAL_ENV", "LC_CTYPE"}
    assert not unexpected, f"the local runtime leaked host env into the step: {sorted(unexpected)[:10]}"


def test_local_runtime_failure_names_the_step(monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from mlplatform.steps import FEATURES, step

    from devtools.render import sample_context

    monkeypatch.setenv("PIPELINE_RUNTIME", "local")
    monkeypatch.setenv("ARTIFACT_ROOT", f"file://{tmp_path}")
    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags["ml_model_training"]
    operator = step("failing_probe", FEATURES, [], cmds=["python", "-c", "import sys; sys.exit(3)"])
    with pytest.raises(RuntimeError, match="failing_probe.*exited with 3"):
        operator.execute(sample_context(dag, "failing_probe", -1))


def test_pull_secrets_and_region_reach_the_step_pods(monkeypatch):
    pods = render(monkeypatch, IMAGE_PULL_SECRETS='["registry-cred"]', AWS_DEFAULT_REGION="eu-west-1")
    for key, pod in pods.items():
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-cred"}], key
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["AWS_DEFAULT_REGION"] == "eu-west-1", key


def test_monitor_reads_labels_from_the_extract_labels_step(cluster_pods):
    labels = cluster_pods[("model_monitoring", "extract_labels")]["spec"]["containers"][0]
    monitor = cluster_pods[("model_monitoring", "monitor")]["spec"]["containers"][0]
    assert labels["args"][0] == "extract-labels" and labels["image"].startswith("mlplatform/features:")
    output = next(e["value"] for e in labels["env"] if e["name"] == "STEP_OUTPUT_URI")
    assert monitor["args"][monitor["args"].index("--labels") + 1] == output
    assert "WAREHOUSE_URI" not in {e["name"] for e in monitor["env"]}, "the monitor pod needs no warehouse secret"


def render_dag(monkeypatch, dag_id: str, **params) -> dict[str, list[str]]:
    """The container args of each step of one DAG, rendered with some Params set as a trigger form would."""
    from airflow.dag_processing.dagbag import DagBag

    from devtools.render import render_pods

    for name, value in CLUSTER_ENV.items():
        monkeypatch.setenv(name, value)
    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).dags[dag_id]
    for name, value in params.items():
        dag.params[name] = value  # validated like the form's values
    return {task: pod.spec.containers[0].args for task, pod in render_pods(dag).items()}


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def parse(module: str, args: list[str]):
    """The args as the step's own CLI parses them (an unknown option or a bad value fails here)."""
    if module == "features":
        from features.cli import commands

        return commands().parser.parse_args(args)
    from mlcontract.env import StepEnvironment
    from trainer.cli import build_commands

    return build_commands(StepEnvironment()).parser.parse_args(args)


def test_every_step_argument_parses_with_its_image_cli(cluster_pods):
    for (dag_id, task), pod in cluster_pods.items():
        parsed = parse(pod["metadata"]["labels"]["app.kubernetes.io/component"], pod["spec"]["containers"][0]["args"])
        assert parsed.command == pod["spec"]["containers"][0]["args"][0], (dag_id, task)


def test_training_defaults_infer_the_spec_for_a_binary_label_with_an_auto_split(cluster_pods):
    def args(task):
        return cluster_pods[("ml_model_training", task)]["spec"]["containers"][0]["args"]

    extract = parse("features", args("extract"))
    assert (extract.features_table, extract.events_table, extract.labels_table) == ("", "events", "churn_labels")
    raw = parse("features", args("validate_raw"))
    assert (raw.task, raw.split) == ("binary", "auto")
    build = parse("features", args("build_features"))
    assert (build.feature_spec, build.task, build.split, build.split_seed) == ("", "binary", "auto", 42)


def test_training_on_a_feature_table_with_a_spec_task_and_split(monkeypatch):
    spec = {"version": 1, "table_columns": {"plan": {"use": "one_hot", "top_k": 5}, "balance": {"use": "numeric"}}}
    steps = render_dag(monkeypatch, "ml_model_training", source_kind="feature_table",
                       features_table="warehouse.account_features", snapshot_column="", entity_key="account_id",
                       label_column="tier", feature_spec=spec, task="multiclass", split="entity", split_seed=7)
    extract = parse("features", steps["extract"])
    # only the feature table: the events side is passed empty, which the extract reads as none
    assert extract.features_table == "warehouse.account_features"
    assert not (extract.events_table or extract.labels_table or extract.entities_table or extract.snapshot_column)
    assert (extract.entity_key, extract.label_column) == ("account_id", "tier")
    raw = parse("features", steps["validate_raw"])
    assert (raw.task, raw.split) == ("multiclass", "entity")
    build = parse("features", steps["build_features"])
    assert (json.loads(build.feature_spec), build.task, build.split, build.split_seed) == (spec, "multiclass",
                                                                                           "entity", 7)
    query = render_dag(monkeypatch, "ml_model_training", source_kind="feature_table",
                       features_query="select * from account_features where region = 'eu'")["extract"]
    assert option(query, "--features-query") == "select * from account_features where region = 'eu'"


def test_scoring_a_feature_table_reads_its_rows_with_the_champions_columns(monkeypatch):
    events = render_dag(monkeypatch, "batch_prediction")["extract_scoring"]
    parsed = parse("features", events)
    assert (parsed.features_table, parsed.events_table, parsed.entities_table) == ("", "events", "customers")
    table = parse("features", render_dag(monkeypatch, "batch_prediction",
                                         features_table="account_features")["extract_scoring"])
    assert table.features_table == "account_features"
    assert not (table.events_table or table.entities_table or table.signup_column)
    # the snapshot and label columns are pinned from the champion's training snapshot, not Params
    assert (table.snapshot_column, table.label_column) == ("", "")  # the render sample: an events champion


def test_monitoring_reads_a_feature_tables_labels_with_the_champions_task(monkeypatch):
    labels = parse("features", render_dag(monkeypatch, "model_monitoring")["extract_labels"])
    assert (labels.labels_table, labels.snapshot_column, labels.label_column, labels.task) == (
        "churn_labels", "snapshot_ts", "churned", "binary")
    table = parse("features", render_dag(monkeypatch, "model_monitoring",
                                         features_table="account_features")["extract_labels"])
    assert table.labels_table == "account_features"
    assert (table.snapshot_column, table.label_column) == ("", "")  # the champion's (render sample: events)

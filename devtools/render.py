"""Render every pod a DAG would launch, without a cluster or a DAG run.

Used by ``make render`` (YAML for review and GitOps) and by the pod tests: what is written here is exactly
what ``PipelineStepOperator`` builds at run time (same operator, same ``build_pod_request_obj``), with the
run-time values (run id, upstream manifests, XCom) replaced by clearly marked samples.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from mlplatform.settings import load_settings
from mlplatform.steps import PipelineStepOperator, trial_arguments

SAMPLE_RUN_ID = "manual__2026-01-04T03:00:00+00:00"
SAMPLE_MODEL_VERSION = "7"
SAMPLE_TRIAL_PARAMS = {"max_depth": 6, "learning_rate": 0.05}
SAMPLE_DATE = "2026-01-04"
# What the light tasks of a run would have pushed, for the templates that read it.
SAMPLE_XCOM = {
    ("select_best_trial", None): {"trial": 0, "valid_auc": 0.0, "params": SAMPLE_TRIAL_PARAMS},
    ("resolve_score_date", None): SAMPLE_DATE,
    ("resolve_champion", "score_date"): SAMPLE_DATE,
    ("resolve_champion", "version"): SAMPLE_MODEL_VERSION,
    ("resolve_champion", "snapshot_uri"): "<the champion's training snapshot>",
    ("resolve_champion", "ab_challenger_share"): "0.0",
    ("resolve_champion", "challenger_version"): "",
}


class _SampleTaskInstance(SimpleNamespace):
    def xcom_pull(self, task_ids: str | None = None, key: str | None = None, **_: Any) -> Any:
        return SAMPLE_XCOM.get((task_ids, key if key != "return_value" else None))


def _sample_context(dag, task_id: str, map_index: int) -> dict[str, Any]:
    ti = _SampleTaskInstance(dag_id=dag.dag_id, task_id=task_id, map_index=map_index, try_number=1)
    return {
        "dag": dag,
        "ti": ti,
        "task_instance": ti,
        "run_id": SAMPLE_RUN_ID,
        "params": {name: param.value for name, param in dag.params.items()},
        "step_manifest": lambda *_: {"model_version": SAMPLE_MODEL_VERSION},
    }


def _step_operators(dag) -> list[tuple[PipelineStepOperator, int]]:
    """Each step once; a mapped step as its first mapped instance with sample arguments."""
    operators = []
    for task in dag.tasks:
        if isinstance(task, PipelineStepOperator):
            operators.append((copy.deepcopy(task), -1))
        elif getattr(task, "operator_class", None) is PipelineStepOperator:
            kwargs = {k: v for k, v in task.partial_kwargs.items() if k not in ("task_id", "dag", "task_group")}
            params = {name: param.value for name, param in dag.params.items()}
            arguments = trial_arguments(
                load_settings().artifact_root, dag.dag_id, SAMPLE_RUN_ID, n_trials=int(params.get("n_trials", 1)),
                seed=int(params.get("seed", 0)), max_rounds=int(params.get("max_boost_rounds", 100)),
            )[0]
            operators.append((PipelineStepOperator(task_id=task.task_id, arguments=arguments, **kwargs), 0))
    return operators


def render_pods(dag) -> dict[str, k8s.V1Pod]:
    pods = {}
    jinja_env = dag.get_template_env()
    for operator, map_index in _step_operators(dag):
        context = _sample_context(dag, operator.task_id, map_index)
        operator.render_template_fields(context, jinja_env=jinja_env)
        pod = operator.build_pod_request_obj(context, dry_run=True)
        # The random suffix differs per render; keep reviews and diffs stable.
        pod.metadata.name = operator.task_id.replace("_", "-")
        pods[operator.task_id] = pod
    return pods


def pod_to_dict(pod: k8s.V1Pod) -> dict[str, Any]:
    return ApiClient().sanitize_for_serialization(pod)

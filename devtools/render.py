"""Render every pod a DAG would launch, without a cluster or a DAG run.

Used by ``make render`` (YAML for review and GitOps) and by the pod tests: what is written here is exactly
what ``PipelineStepOperator`` builds at run time (same operator, same ``build_pod_request_obj``), with the
run-time values replaced by samples. Nothing here names a task: an upstream task's XCom renders as the
sample its callable declares (``mlplatform.xcom.renders_as``), a Jinja macro as its declared sample, and any
other XCom as a marked placeholder; a mapped step gets the first element of its upstream's sample.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from airflow.sdk.definitions.xcom_arg import XComArg
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from mlplatform.steps import PipelineStepOperator
from mlplatform.xcom import sample_of

SAMPLE_RUN_ID = "manual__2026-01-04T03:00:00+00:00"


def placeholder(task_id: str, key: str | None) -> str:
    """What an XCom without a declared sample renders as: visibly not a real value."""
    return f"<xcom {task_id}{'.' + key if key else ''}>"


class SampleTaskInstance(SimpleNamespace):
    """A task instance whose ``xcom_pull`` answers with the upstream tasks' declared samples."""

    def xcom_pull(self, task_ids: str | None = None, key: str | None = None, **_: Any) -> Any:
        key = None if key == "return_value" else key
        sample = self.samples.get(task_ids)
        if sample is None:
            return placeholder(str(task_ids), key)
        return sample.get(key, placeholder(str(task_ids), key)) if key else sample


def xcom_samples(dag, context: dict[str, Any]) -> dict[str, Any]:
    """``{task_id: sample}`` of every task whose callable declares what it pushes."""
    samples = {}
    for task in dag.tasks:
        sample = sample_of(getattr(task, "python_callable", None), context)
        if sample is not None:
            samples[task.task_id] = sample
    return samples


def sample_macro(sample: Any):
    """A Jinja macro that returns its declared sample, whatever it is called with."""
    return lambda *_, **__: sample


def sample_context(dag, task_id: str, map_index: int) -> dict[str, Any]:
    ti = SampleTaskInstance(dag_id=dag.dag_id, task_id=task_id, map_index=map_index, try_number=1, samples={})
    context = {
        "dag": dag,
        "ti": ti,
        "task_instance": ti,
        "run_id": SAMPLE_RUN_ID,
        "params": {name: param.value for name, param in dag.params.items()},
    }
    for name, macro in (dag.user_defined_macros or {}).items():
        context[name] = sample_macro(sample_of(macro, context))
    ti.samples = xcom_samples(dag, context)
    return context


def mapped_arguments(dag, task) -> dict[str, Any]:
    """The first mapped instance's expanded arguments, from the sample of the task they come from."""
    expanded = {}
    for name, value in task.expand_input.value.items():
        if isinstance(value, XComArg):
            upstream = value.operator.task_id
            value = sample_context(dag, task.task_id, 0)["ti"].xcom_pull(task_ids=upstream)
        expanded[name] = value[0]
    return expanded


def step_operators(dag) -> list[tuple[PipelineStepOperator, int]]:
    """Each step once; a mapped step as its first mapped instance."""
    operators = []
    for task in dag.tasks:
        if isinstance(task, PipelineStepOperator):
            operators.append((copy.deepcopy(task), -1))
        elif getattr(task, "operator_class", None) is PipelineStepOperator:
            kwargs = {k: v for k, v in task.partial_kwargs.items() if k not in ("task_id", "dag", "task_group")}
            operators.append(
                (PipelineStepOperator(task_id=task.task_id, **mapped_arguments(dag, task), **kwargs), 0)
            )
    return operators


def render_pods(dag) -> dict[str, k8s.V1Pod]:
    pods = {}
    jinja_env = dag.get_template_env()
    for operator, map_index in step_operators(dag):
        context = sample_context(dag, operator.task_id, map_index)
        operator.render_template_fields(context, jinja_env=jinja_env)
        pod = operator.build_pod_request_obj(context, dry_run=True)
        # The random suffix differs per render; keep reviews and diffs stable.
        pod.metadata.name = operator.task_id.replace("_", "-")
        pods[operator.task_id] = pod
    return pods


def pod_to_dict(pod: k8s.V1Pod) -> dict[str, Any]:
    return ApiClient().sanitize_for_serialization(pod)

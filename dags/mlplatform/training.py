"""The training DAG's Airflow-side tasks: plan the trials, pick the best, apply the promotion rule, record it.

Each function is what one task of ``ml_model_training`` does; the DAG file only wires them. They read step
manifests with their models (``mlcontract.manifests``) and pass small dicts through XCom.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mlcontract import layout
from mlcontract.manifests import EvaluateManifest, ModelEvaluation, TrainManifest, TrialManifest
from mlcontract.names import AB_TEST, CHAMPION, FULL
from mlcontract.registry import version_by_alias
from mlcontract.rules import PROMOTE, Decision, Score, TaskMetric, decide_promotion, task_metric

from mlplatform import deployment, registry
from mlplatform.params import memory_budget
from mlplatform.scoring import SNAPSHOT_TAG
from mlplatform.settings import Settings, load_settings
from mlplatform.steps import read_step_manifest
from mlplatform.xcom import renders_as

SAMPLE_MODEL_VERSION = "7"
SAMPLE_CHAMPION_PIN = {"version": "6", "snapshot_uri": "<the champion's training snapshot>"}
SAMPLE_BEST_TRIAL = {"trial": 0, "metric": "auc", "valid_metric": 0.0, "higher_is_better": True, "valid_auc": 0.0,
                     "params": {"max_depth": 6, "learning_rate": 0.05}}


@renders_as(SAMPLE_MODEL_VERSION)
def challenger_version(dag_id: str, run_id: str) -> str:
    """Jinja macro: the version ``train_model`` registered, read from its manifest when ``evaluate`` renders."""
    manifest = TrainManifest.read(layout.step_dir(load_settings().artifact_root, dag_id, run_id, "train_model"))
    return str(manifest.model_version)


def trial_arguments(
    artifact_root: str, dag_id: str, run_id: str, *, n_trials: int, seed: int, max_rounds: int,
    memory_budget: str = "",
) -> list[list[str]]:
    """CLI arguments of each hyperparameter trial; one mapped trainer pod per entry. ``memory_budget``: the
    Param (a size), passed when given; the trainer's default (the deployment's budget) otherwise."""
    features = layout.step_dir(artifact_root, dag_id, run_id, "build_features")
    budget = ["--memory-budget", memory_budget] if memory_budget else []
    return [
        ["trial", "--features", features, "--trial-index", str(index), "--n-trials", str(n_trials),
         "--seed", str(seed), "--max-rounds", str(max_rounds), *budget]
        for index in range(n_trials)
    ]


def plan_trials(params: dict[str, Any], dag_id: str, run_id: str) -> list[list[str]]:
    """The trials' arguments; a bad ``memory_budget`` fails here, naming the Param, before any pod starts."""
    return trial_arguments(
        load_settings().artifact_root, dag_id, run_id, n_trials=int(params["n_trials"]), seed=int(params["seed"]),
        max_rounds=int(params["max_boost_rounds"]), memory_budget=memory_budget(params),
    )


def sample_trials(context: dict[str, Any]) -> list[list[str]]:
    """What ``plan_trials`` pushes for the sample run ``make render`` shows."""
    return plan_trials(context["params"], context["dag"].dag_id, context["run_id"])


def best_trial(trials: list[TrialManifest]) -> dict[str, Any]:
    """Best trial by its validation metric in the metric's direction (AUC highest, log loss and RMSE lowest);
    ties go to the lower trial index so reruns choose the same."""

    def rank(i: int) -> tuple[float, int]:
        trial = trials[i]
        return (trial.valid_metric if trial.higher_is_better else -trial.valid_metric, -i)

    index = max(range(len(trials)), key=rank)
    best = trials[index]
    return {"trial": index, "metric": best.metric, "valid_metric": best.valid_metric,
            "higher_is_better": best.higher_is_better, "valid_auc": best.valid_auc, "params": best.params}


def select_best_trial(n_trials: int) -> dict[str, Any]:
    trials = [read_step_manifest("train_trial", TrialManifest, map_index=i) for i in range(n_trials)]
    best = best_trial(trials)
    print(f"best trial {best['trial']} of {len(trials)}: valid {best['metric']} {best['valid_metric']:.4f} "
          f"params {best['params']}")
    return best


def pin_champion(settings: Settings | None = None) -> dict[str, str]:
    """The champion this run compares against, pinned once: its version and its training snapshot (both ""
    when there is no champion). ``promote`` moves ``champion`` only if it still points at this version."""
    settings = settings or load_settings()
    champion = version_by_alias(registry.client(settings.mlflow_tracking_uri), settings.registered_model_name,
                                CHAMPION)
    if champion is None:
        print(f"no @{CHAMPION} of {settings.registered_model_name}: this run's model would be the first")
        return {"version": "", "snapshot_uri": ""}
    snapshot_uri = (champion.tags or {}).get(SNAPSHOT_TAG, "")
    print(f"comparing against @{CHAMPION} v{champion.version} (training snapshot {snapshot_uri or 'unknown'})")
    return {"version": str(champion.version), "snapshot_uri": snapshot_uri}


def score(evaluation: ModelEvaluation, rows: int, metric: str = "auc") -> Score:
    """A model's test-set value of ``metric`` as the promotion rule compares it."""
    metrics = evaluation.metrics or {}
    value = metrics.get(metric)
    return Score(version=evaluation.version, value=None if value is None else float(value), rows=rows,
                 comparable=evaluation.comparable and value is not None, reason=evaluation.reason)


def promotion_threshold(evaluation: EvaluateManifest, task: TaskMetric, minimum: float) -> float:
    """What the challenger must clear: the ``promotion_threshold`` Param (a minimum AUC) for binary models;
    the naive baseline's test value for lower-is-better metrics (:data:`mlcontract.rules.TASK_METRICS`)."""
    if task.higher_is_better:
        return minimum
    baseline = (evaluation.baseline or {}).get(task.name)
    if baseline is None:
        raise ValueError(f"the evaluate manifest has no naive-baseline {task.name}: rerun evaluate")
    return float(baseline)


def promotion_decision(
    evaluation: EvaluateManifest, *, threshold: float, margin: float, allow_incomparable: bool = False,
    train: TrainManifest | None = None,
) -> Decision:
    """The promotion rule on the challenger's and champion's test metric (the task's) on the same test set;
    ``threshold`` is the minimum of a higher-is-better metric, ``margin`` the Param (relative when lower is
    better); ``allow_incomparable`` the Param that lets a challenger be promoted over a champion that could
    not be compared. ``train``: the train step's manifest, to say when its version was reused."""
    task = task_metric(evaluation.task)
    champion = evaluation.champion
    decision = decide_promotion(
        score(evaluation.challenger, evaluation.test_rows, task.name),
        score(champion, evaluation.test_rows, task.name) if champion is not None else None,
        threshold=promotion_threshold(evaluation, task, threshold), margin=margin, metric=f"test_{task.name}",
        task=task, allow_incomparable=allow_incomparable,
    )
    if train is not None and train.reused_from:
        reused = (f"v{train.model_version} reused: an identical fit (same snapshot, parameters, seed and code) "
                  f"registered by {train.reused_from}")
        decision = decision.model_copy(update={"reason": f"{reused}; {decision.reason}"})
    return decision


def compare_models(params: dict[str, Any]) -> dict[str, Any]:
    decision = promotion_decision(
        read_step_manifest("evaluate", EvaluateManifest),
        threshold=float(params["promotion_threshold"]), margin=float(params["promotion_margin"]),
        allow_incomparable=bool(params.get("allow_incomparable_promotion", False)),
        train=read_step_manifest("train_model", TrainManifest),
    )
    print(f"{decision.action.upper()} ({decision.basis}): {decision.reason}")
    return decision.model_dump(mode="json")


def route(decision: dict[str, Any], deploy_mode: str) -> str:
    """The task after the branch: reject, promote, or (with a champion to test against) an A/B test."""
    promotion = Decision.model_validate(decision)
    if promotion.action != PROMOTE:
        return "reject"
    # The first model has no champion to test against: it is promoted outright.
    if deploy_mode == AB_TEST and promotion.incumbent is not None:
        return "start_ab_test"
    return "promote"


def record_decision(action: str, decision: dict[str, Any], dag_id: str, run_id: str,
                    settings: Settings | None = None) -> dict[str, Any]:
    """The audited registry move (``registry.promote`` or ``registry.reject``) for a promotion decision.

    A promotion is a compare-and-set on the champion the challenger was compared with: when ``champion``
    moved since (a concurrent run promoted), a reject is recorded instead and nothing moves.
    """
    settings = settings or load_settings()
    promotion = Decision.model_validate(decision)
    compared_with = promotion.incumbent.version if promotion.incumbent else None
    cas = {"expected_champion": compared_with} if action == PROMOTE else {"compared_with": compared_with}
    move = getattr(registry, action)(
        settings.mlflow_tracking_uri, settings.artifact_root, settings.registered_model_name,
        promotion.candidate.version, reason=promotion.reason, dag_id=dag_id, run_id=run_id,
        metrics={"challenger": promotion.candidate.value,
                 "champion": promotion.incumbent.value if promotion.incumbent else None},
        basis=promotion.basis, **cas,
    )
    print(f"{move.action}: {move.reason}")
    return asdict(move)


def deploy(move: dict[str, Any], dag_id: str, run_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """Record what serving should run: ``make serve`` locally, the chart's per-alias Deployments on a cluster."""
    settings = settings or load_settings()
    if move["action"] != PROMOTE:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"nothing to deploy: {move['reason']}")
    return deployment.record_deployment(
        settings.artifact_root, settings.registered_model_name, move["to_version"], mode=FULL,
        dag_id=dag_id, run_id=run_id,
    )


def start_ab_test(decision: dict[str, Any], challenger_share: float, dag_id: str, run_id: str,
                  settings: Settings | None = None) -> dict[str, Any]:
    """Serve the challenger next to the champion; monitoring decides the test from realised outcomes."""
    settings = settings or load_settings()
    promotion = Decision.model_validate(decision)
    current = registry.alias_version(settings.mlflow_tracking_uri, settings.registered_model_name, CHAMPION)
    if current != promotion.incumbent.version:  # compare-and-set, as for a promotion
        move = registry.reject(
            settings.mlflow_tracking_uri, settings.artifact_root, settings.registered_model_name,
            promotion.candidate.version, dag_id=dag_id, run_id=run_id, metrics={}, basis="champion moved",
            compared_with=promotion.incumbent.version,
            reason=f"@{CHAMPION} moved from v{promotion.incumbent.version} to v{current} after this run compared "
            f"v{promotion.candidate.version} with it: no A/B test started",
        )
        return asdict(move)
    return deployment.record_deployment(
        settings.artifact_root, settings.registered_model_name, promotion.incumbent.version, mode=AB_TEST,
        challenger_version=promotion.candidate.version, challenger_share=challenger_share,
        dag_id=dag_id, run_id=run_id,
    )

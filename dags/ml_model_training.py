"""
### ml_model_training

Runs weekly (Sundays 03:00 UTC) and whenever `model_monitoring` emits the drift asset.

Extract → **gate** (GX, raw data) → point-in-time features (polars) → **gate** (GX, features) →
hyperparameter trials fanned out on the `gpu_pool` → final fit, registered as `challenger` →
challenger and champion evaluated on the same test set → **branch**: promote (→ deploy), start an A/B test
(`deploy_mode=ab_test`: the challenger serves `challenger_share` until monitoring decides), or reject.

Every compute step is a pod built by `mlplatform.steps` (`PIPELINE_RUNTIME=kubernetes`: KubernetesPodOperator;
`local`: the same pod's command as a local process). Steps pass small manifests, never data.
A failed gate fails the run and changes nothing downstream; a rejected model leaves `champion` as it was.

Trigger it by hand with the form to train on your own table: source tables or queries, entity key,
timestamp, label, cutoff, number of trials and promotion rule are all Params.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from airflow.sdk import Param, TriggerRule, chain, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from mlplatform.assets import DRIFT_ASSET
from mlplatform.defaults import dag_kwargs, date_param
from mlplatform.settings import load_settings
from mlplatform.steps import FEATURES, TRAINER_CPU, TRAINER_GPU, mapped_step, step, step_dir

SETTINGS = load_settings()
CHALLENGER_VERSION = "{{ step_manifest(dag.dag_id, run_id, 'train_model')['model_version'] }}"


def step_manifest(dag_id: str, run_id: str, task_id: str) -> dict:
    """Jinja macro: a finished step's manifest, read from storage when a downstream step is rendered."""
    from features import io

    from mlplatform.steps import step_output_uri

    return io.read_manifest(step_output_uri(load_settings().artifact_root, dag_id, run_id, task_id))


def record_decision(action: str, decision: dict, dag_id: str, run_id: str) -> dict:
    """The audited registry move (`registry.promote` or `registry.reject`) for a promotion decision."""
    from dataclasses import asdict

    from mlplatform import registry

    move = getattr(registry, action)(
        SETTINGS.mlflow_tracking_uri, SETTINGS.artifact_root, SETTINGS.registered_model_name,
        decision["challenger_version"], reason=decision["reason"], dag_id=dag_id, run_id=run_id,
        metrics={"challenger": decision["challenger"], "champion": decision["champion"]},
    )
    return asdict(move)


@dag(
    dag_id="ml_model_training",
    # Sundays 03:00 UTC, or as soon as model_monitoring reports drift.
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC"), assets=[DRIFT_ASSET]
    ),
    start_date=datetime(2026, 1, 4, tzinfo=timezone.utc),
    doc_md=__doc__,
    tags=["ml", "training", "customer-churn"],
    **dag_kwargs(SETTINGS),
    user_defined_macros={"step_manifest": step_manifest},
    params={
        "events_table": Param("events", type="string", description="Warehouse table of timestamped events."),
        "events_query": Param(
            "", type="string", description="SQL query for events; overrides events_table when set."
        ),
        "labels_table": Param("churn_labels", type="string", description="Table of labels per snapshot."),
        "labels_query": Param("", type="string", description="SQL query for labels; overrides labels_table."),
        "entities_table": Param(
            "customers", type="string", description="Optional table of static entity attributes ('' for none)."
        ),
        "entity_key": Param("customer_id", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "timestamp_column": Param("event_ts", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "snapshot_column": Param("snapshot_ts", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "label_column": Param("churned", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "cutoff": date_param("Train on snapshots up to this date (YYYY-MM-DD); empty: all labelled snapshots."),
        "min_event_rows": Param(1000, type="integer", minimum=1, description="Raw gate: minimum event rows."),
        "n_trials": Param(8, type="integer", minimum=1, maximum=64, description="Hyperparameter trials."),
        "max_boost_rounds": Param(2000, type="integer", minimum=1, maximum=20000),
        "seed": Param(42, type="integer", minimum=0, description="Seed of the search and of every fit."),
        "promotion_threshold": Param(0.7, type="number", minimum=0.5, maximum=1.0, description="Minimum test AUC."),
        "promotion_margin": Param(
            0.002, type="number", minimum=0.0, maximum=0.5, description="Test AUC the challenger must add."
        ),
        "deploy_mode": Param(
            "full",
            type="string",
            enum=["full", "ab_test"],
            description="full: a promoted model becomes champion and takes all traffic. ab_test: it serves "
            "challenger_share of the traffic next to the champion until monitoring decides the test.",
        ),
        "challenger_share": Param(0.1, type="number", exclusiveMinimum=0.0, exclusiveMaximum=1.0),
    },
)
def ml_model_training():
    extract = step(
        "extract",
        FEATURES,
        [
            "extract",
            # A query, when given, replaces the table (the CLI accepts one or the other).
            "{{ '--events-query' if params.events_query else '--events-table' }}",
            "{{ params.events_query or params.events_table }}",
            "{{ '--labels-query' if params.labels_query else '--labels-table' }}",
            "{{ params.labels_query or params.labels_table }}",
            "--entities-table", "{{ params.entities_table }}",
            "--entity-key", "{{ params.entity_key }}",
            "--timestamp-column", "{{ params.timestamp_column }}",
            "--snapshot-column", "{{ params.snapshot_column }}",
            "--label-column", "{{ params.label_column }}",
            "--cutoff", "{{ params.cutoff }}",
        ],
    )
    # Gates do not retry: bad data stays bad, and a retry only delays the alert.
    validate_raw = step(
        "validate_raw",
        FEATURES,
        ["validate-raw", "--extract", step_dir("extract"), "--min-events", "{{ params.min_event_rows }}"],
        retries=0,
    )
    build_features = step(
        "build_features",
        FEATURES,
        ["build", "--extract", step_dir("extract"), "--snapshot-root", f"{SETTINGS.artifact_root}/features"],
    )
    validate_features = step(
        "validate_features", FEATURES, ["validate-features", "--features", step_dir("build_features")], retries=0
    )

    @task
    def plan_trials(params=None, dag=None, run_id=None) -> list[list[str]]:
        """One argument list per trial; each becomes a mapped trainer pod in the gpu_pool."""
        from mlplatform.steps import trial_arguments

        return trial_arguments(
            SETTINGS.artifact_root, dag.dag_id, run_id, n_trials=int(params["n_trials"]),
            seed=int(params["seed"]), max_rounds=int(params["max_boost_rounds"]),
        )

    trial_arguments = plan_trials()
    trials = mapped_step("train_trial", TRAINER_GPU).expand(arguments=trial_arguments)

    @task
    def select_best_trial(trial_arguments: list[list[str]]) -> dict:
        """Best trial by validation AUC; ties go to the lower trial index so reruns choose the same."""
        from mlplatform.steps import read_step_manifest

        results = [read_step_manifest("train_trial", map_index=i) for i in range(len(trial_arguments))]
        best_index = max(range(len(results)), key=lambda i: (results[i]["valid_auc"], -i))
        best = results[best_index]
        print(f"best trial {best_index} of {len(results)}: valid AUC {best['valid_auc']:.4f} params {best['params']}")
        return {"trial": best_index, "valid_auc": best["valid_auc"], "params": best["params"]}

    best_trial = select_best_trial(trial_arguments)

    train_model = step(
        "train_model",
        TRAINER_GPU,
        [
            "train",
            "--features", step_dir("build_features"),
            "--params", "{{ ti.xcom_pull(task_ids='select_best_trial')['params'] | tojson }}",
            "--seed", "{{ params.seed }}",
            "--max-rounds", "{{ params.max_boost_rounds }}",
            "--model-name", SETTINGS.registered_model_name,
            "--validations", step_dir("validate_raw"), step_dir("validate_features"),
        ],
    )
    evaluate = step(
        "evaluate",
        TRAINER_CPU,
        [
            "evaluate",
            "--features", step_dir("build_features"),
            "--model-name", SETTINGS.registered_model_name,
            "--challenger-version", CHALLENGER_VERSION,
        ],
    )

    @task
    def compare_models(params=None) -> dict:
        """Apply the promotion rule to the challenger's and champion's metrics on the same test set."""
        from mlplatform.promotion import decide_promotion
        from mlplatform.steps import read_step_manifest

        evaluation = read_step_manifest("evaluate")
        champion = evaluation.get("champion") or {}
        decision = decide_promotion(
            float(evaluation["challenger"]["metrics"]["auc"]),
            float(champion["metrics"]["auc"]) if champion.get("comparable", True) and champion.get("metrics") else None,
            threshold=float(params["promotion_threshold"]),
            margin=float(params["promotion_margin"]),
            metric="test_auc",
        )
        print(("PROMOTE: " if decision.promote else "REJECT: ") + decision.reason)
        return {
            **decision.as_dict(),
            "challenger_version": str(evaluation["challenger"]["version"]),
            "champion_version": champion.get("version"),
        }

    decision = compare_models()

    @task.branch
    def promote_or_reject(decision: dict, params=None) -> str:
        if not decision["promote"]:
            return "reject"
        # The first model has no champion to test against: it is promoted outright.
        if params["deploy_mode"] == "ab_test" and decision["champion_version"] is not None:
            return "start_ab_test"
        return "promote"

    @task
    def promote(decision: dict, dag=None, run_id=None) -> dict:
        """Challenger → champion; the replaced champion stays as `previous-champion` for rollback."""
        return record_decision("promote", decision, dag.dag_id, run_id)

    @task
    def reject(decision: dict, dag=None, run_id=None) -> dict:
        """Record why the challenger was not promoted; the champion stays exactly as it was."""
        return record_decision("reject", decision, dag.dag_id, run_id)

    @task
    def deploy(move: dict, dag=None, run_id=None) -> dict:
        """Record what serving should run: `make serve` locally, the chart's per-alias Deployments on a cluster."""
        from mlplatform import deployment

        return deployment.record_deployment(
            SETTINGS.artifact_root, SETTINGS.registered_model_name, move["to_version"], mode="full",
            dag_id=dag.dag_id, run_id=run_id,
        )

    @task
    def start_ab_test(decision: dict, params=None, dag=None, run_id=None) -> dict:
        """Serve the challenger next to the champion; monitoring decides the test from realised outcomes."""
        from mlplatform import deployment

        return deployment.record_deployment(
            SETTINGS.artifact_root, SETTINGS.registered_model_name, decision["champion_version"], mode="ab_test",
            challenger_version=decision["challenger_version"], challenger_share=float(params["challenger_share"]),
            dag_id=dag.dag_id, run_id=run_id,
        )

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def report(decision: dict, best_trial: dict) -> dict:
        """A short run summary (also what `make run` prints)."""
        from mlplatform.report import write_run_summary

        summary = write_run_summary(SETTINGS, decision=decision, best_trial=best_trial)
        print(json.dumps(summary, indent=2, default=str))
        return summary

    route = promote_or_reject(decision)
    promoted = promote(decision)
    rejected = reject(decision)
    ab_test = start_ab_test(decision)
    deployed = deploy(promoted)
    summary = report(decision, best_trial)

    chain(extract, validate_raw, build_features, validate_features, trial_arguments)
    chain(trials, best_trial, train_model, evaluate, decision, route)
    route >> [promoted, ab_test, rejected]
    [deployed, ab_test, rejected] >> summary


ml_model_training()

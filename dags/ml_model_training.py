"""
### ml_model_training

Runs weekly (Sundays 03:00 UTC) and whenever `model_monitoring` emits the drift asset.

**Preflight** (MLflow, warehouse, artifact store; seconds) → extract → **gate** (GX, raw data) →
point-in-time features (polars) → **gate** (GX, features) → hyperparameter trials fanned out on the
`gpu_pool` → final fit, registered as `challenger` → the champion pinned, its own features rebuilt (its
spec and vocabulary) on the same test rows → challenger and champion evaluated on those rows → **branch**:
promote (→ deploy), start an A/B test (`deploy_mode=ab_test`: the challenger serves `challenger_share` until
monitoring decides), or reject.

"First model" means no champion exists. A champion that cannot be compared (another task, its training
snapshot gone) refuses promotion unless `allow_incomparable_promotion` is set; the audit record says which.
`champion` moves only if it still points at the version the challenger was compared with.

Every compute step is a pod built by `mlplatform.steps` (`PIPELINE_RUNTIME=kubernetes`: KubernetesPodOperator;
`local`: the same pod's command as a local process). Steps pass small manifests, never data.
A failed gate fails the run and changes nothing downstream; a rejected model leaves `champion` as it was.

Trigger it by hand with the form to train on your own data: an events table and a labels table (labels at
one snapshot date or many), or a ready-made feature table (`source_kind`); entity key, timestamp, snapshot
and label columns, cutoff, the task (binary, multiclass, regression), the split, the feature spec (inferred
from the column types when empty), number of trials and promotion rule are all Params.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, TriggerRule, chain, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable
from mlcontract import layout
from mlplatform import preflight, training
from mlplatform.assets import DRIFT_ASSET
from mlplatform.defaults import dag_kwargs
from mlplatform.params import (
    EVENTS_TABLE_DESCRIPTION,
    TRAINING_FORM,
    column_params,
    date_param,
    in_sections,
    json_arg,
    learning_params,
    memory_budget_param,
    optional_args,
    optional_column_param,
    optional_entities_param,
    param_args,
    relation_params,
    training_source_args,
    training_source_params,
)
from mlplatform.settings import load_settings
from mlplatform.steps import FEATURES, TRAINER_CPU, TRAINER_GPU, mapped_step, step, step_dir
from mlplatform.xcom import pull, renders_as

SETTINGS = load_settings()


@dag(
    dag_id="ml_model_training",
    # Sundays 03:00 UTC, or as soon as model_monitoring reports drift.
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC"), assets=[DRIFT_ASSET]
    ),
    **dag_kwargs(SETTINGS, stage="training", start_date=datetime(2026, 1, 4, tzinfo=UTC), doc_md=__doc__),
    user_defined_macros={"challenger_version": training.challenger_version},
    params=in_sections({
        **training_source_params(),
        **relation_params("events", "events", EVENTS_TABLE_DESCRIPTION),
        **relation_params("labels", "churn_labels", "Table of labels: entity key, snapshot date, label."),
        "entities_table": optional_entities_param(
            "Optional table of static entity attributes (events source; empty for none)."
        ),
        **column_params(entity_key="customer_id", timestamp_column="event_ts", label_column="churned"),
        "snapshot_column": optional_column_param(
            "snapshot_ts", "Date the label is observed at (labels table, or feature table: empty when it has one "
            "row per entity)."
        ),
        **learning_params(),
        "cutoff": date_param("Train on snapshots up to this date (YYYY-MM-DD); empty: all labelled snapshots."),
        "min_event_rows": Param(1000, type="integer", minimum=1, description="Raw gate: minimum event rows (events source)."),
        "n_trials": Param(8, type="integer", minimum=1, maximum=64, description="Hyperparameter trials."),
        "max_boost_rounds": Param(2000, type="integer", minimum=1, maximum=20000),
        "seed": Param(42, type="integer", minimum=0, description="Seed of the search and of every fit."),
        "memory_budget": memory_budget_param(),
        "promotion_threshold": Param(
            0.7, type="number", minimum=0.5, maximum=1.0,
            description="binary: minimum test AUC (multiclass and regression models must beat the naive baseline).",
        ),
        "promotion_margin": Param(
            0.002, type="number", minimum=0.0, maximum=0.5,
            description="binary: test AUC the challenger must add to the champion's; multiclass and regression: "
            "relative improvement of its log loss or RMSE (0.01 = 1 % lower).",
        ),
        "deploy_mode": Param(
            "full",
            type="string",
            enum=["full", "ab_test"],
            description="full: a promoted model becomes champion and takes all traffic. ab_test: it serves "
            "challenger_share of the traffic next to the champion until monitoring decides the test.",
        ),
        "challenger_share": Param(0.1, type="number", exclusiveMinimum=0.0, exclusiveMaximum=1.0),
        "allow_incomparable_promotion": Param(
            False, type="boolean",
            description="Promote a challenger that clears the threshold even when the champion cannot be compared "
            "with it (another task, or its training snapshot is gone). Off: such a challenger is rejected.",
        ),
    }, TRAINING_FORM),
)
def ml_model_training():
    # No retries: an unreachable service is reported in seconds, not after the default retry delays.
    @task(task_id="preflight", retries=0)
    def preflight_checks() -> list[str]:
        """MLflow, the warehouse and the artifact store answer, each within seconds, before any compute."""
        return preflight.preflight(SETTINGS)

    checked = preflight_checks()

    extract = step(
        "extract",
        FEATURES,
        [
            "extract",
            *training_source_args(),
            *param_args("entity_key", "timestamp_column"),
            *optional_args("snapshot_column"),
            *param_args("label_column"),
            *optional_args("cutoff"),
        ],
    )
    # Gates do not retry: bad data stays bad, and a retry only delays the alert.
    validate_raw = step(
        "validate_raw",
        FEATURES,
        [
            "validate-raw",
            "--extract", step_dir("extract"),
            "--min-events", "{{ params.min_event_rows }}",
            *param_args("task", "split"),
            "--feature-spec", json_arg("feature_spec"),  # the columns it treats as numbers must be numbers
        ],
        retries=0,
    )
    build_features = step(
        "build_features",
        FEATURES,
        [
            "build",
            "--extract", step_dir("extract"),
            "--snapshot-root", layout.snapshot_root(SETTINGS.artifact_root),
            "--feature-spec", json_arg("feature_spec"),
            *param_args("task", "split", "split_seed"),
        ],
    )
    validate_features = step(
        "validate_features", FEATURES, ["validate-features", "--features", step_dir("build_features")], retries=0
    )

    @task
    @renders_as(training.sample_trials)
    def plan_trials(params=None, dag=None, run_id=None) -> list[list[str]]:
        """One argument list per trial; each becomes a mapped trainer pod in the gpu_pool."""
        return training.plan_trials(params, dag.dag_id, run_id)

    trial_arguments = plan_trials()
    trials = mapped_step("train_trial", TRAINER_GPU).expand(arguments=trial_arguments)

    @task
    @renders_as(training.SAMPLE_BEST_TRIAL)
    def select_best_trial(trial_arguments: list[list[str]]) -> dict:
        """Best trial by validation AUC; ties go to the lower trial index so reruns choose the same."""
        return training.select_best_trial(len(trial_arguments))

    best_trial = select_best_trial(trial_arguments)

    train_model = step(
        "train_model",
        TRAINER_GPU,
        [
            "train",
            "--features", step_dir("build_features"),
            "--params", pull("select_best_trial", then="['params'] | tojson"),
            *param_args("seed"),
            "--max-rounds", "{{ params.max_boost_rounds }}",
            *optional_args("memory_budget"),  # empty: the deployment's budget (the trainer's default)
            "--model-name", SETTINGS.registered_model_name,
            "--validations", step_dir("validate_raw"), step_dir("validate_features"),
        ],
    )
    @task(multiple_outputs=True)
    @renders_as(training.SAMPLE_CHAMPION_PIN)
    def pin_champion() -> dict:
        """The champion this run compares against, pinned once: promotion moves `champion` only from it."""
        return training.pin_champion(SETTINGS)

    champion = pin_champion()
    champion_features = step(
        "build_champion_features",
        FEATURES,
        [
            "build-champion-features",
            "--features", step_dir("build_features"),
            "--model-name", SETTINGS.registered_model_name,
            "--champion-version", pull("pin_champion", "version"),
            "--reference-snapshot", pull("pin_champion", "snapshot_uri"),
        ],
    )
    evaluate = step(
        "evaluate",
        TRAINER_CPU,
        [
            "evaluate",
            "--features", step_dir("build_features"),
            "--model-name", SETTINGS.registered_model_name,
            "--challenger-version", "{{ challenger_version(dag.dag_id, run_id) }}",
            "--champion-features", step_dir("build_champion_features"),
        ],
    )

    @task
    def compare_models(params=None) -> dict:
        """Apply the promotion rule to the challenger's and champion's metrics on the same test set."""
        return training.compare_models(params)

    decision = compare_models()

    @task.branch
    def promote_or_reject(decision: dict, params=None) -> str:
        return training.route(decision, params["deploy_mode"])

    @task
    def promote(decision: dict, dag=None, run_id=None) -> dict:
        """Challenger → champion; the replaced champion stays as `previous-champion` for rollback."""
        return training.record_decision("promote", decision, dag.dag_id, run_id)

    @task
    def reject(decision: dict, dag=None, run_id=None) -> dict:
        """Record why the challenger was not promoted; the champion stays exactly as it was."""
        return training.record_decision("reject", decision, dag.dag_id, run_id)

    @task
    def deploy(move: dict, dag=None, run_id=None) -> dict:
        """Record what serving should run: `make serve` locally, the chart's per-alias Deployments on a cluster."""
        return training.deploy(move, dag.dag_id, run_id)

    @task
    def start_ab_test(decision: dict, params=None, dag=None, run_id=None) -> dict:
        """Serve the challenger next to the champion; monitoring decides the test from realised outcomes."""
        return training.start_ab_test(decision, float(params["challenger_share"]), dag.dag_id, run_id)

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def report(decision: dict, best_trial: dict) -> dict:
        """A short run summary (also what `make run` prints)."""
        from mlplatform.report import write_run_summary

        return write_run_summary(SETTINGS, decision=decision, best_trial=best_trial)

    route = promote_or_reject(decision)
    promoted = promote(decision)
    rejected = reject(decision)
    ab_test = start_ab_test(decision)
    deployed = deploy(promoted)
    summary = report(decision, best_trial)

    chain(checked, extract, validate_raw, build_features, validate_features, trial_arguments)
    chain(trials, best_trial, train_model, champion, champion_features, evaluate, decision, route)
    route >> [promoted, ab_test, rejected]
    [deployed, ab_test, rejected] >> summary


ml_model_training()

"""
### model_monitoring

Daily, after batch prediction: **drift** of the served model's inputs and scores against the reference
stored with it at training time (PSI per feature and of the scores), and its **realised performance** once
labels for the score date exist (champion AUC; the previous champion's AUC on the same entities).

- drift above the PSI threshold → `emit_retrain_signal` succeeds, which records an event on the drift Asset
  (`mlplatform.assets.DRIFT_ASSET`) and so triggers `ml_model_training`; a drift alert is sent. No drift:
  the task is skipped and emits nothing.
- the champion worse than the previous champion by more than `rollback_margin` → `rollback_if_degraded`
  points `champion` back at `previous-champion` (an audited alias move), alerts, and records the deployment.
- an A/B test running (deployment mode `ab_test`) with a decision in the report → `decide_ab_test`
  promotes the challenger or ends the test keeping the champion, and sets the deployment back to `full`.

The realised labels are read from the warehouse by a features step (`extract_labels`): from the labels table,
or for a champion trained on a ready-made feature table from that table (`features_table`), with the
champion's own task and columns (from its training snapshot, `resolve_champion`); the measuring is one
step (`python -m trainer monitor`, pods built by `mlplatform.steps`); the tasks after it only read its
manifest and act (`mlplatform.monitoring`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, TriggerRule, chain, dag, task
from mlplatform import monitoring, scoring
from mlplatform.assets import DRIFT_ASSET
from mlplatform.defaults import dag_kwargs
from mlplatform.params import (
    MONITORING_FORM,
    OPTIONAL,
    SAMPLE_DATE,
    column_params,
    date_param,
    in_sections,
    optional_column_param,
    optional_table_param,
    param_args,
    relation_params,
)
from mlplatform.params import score_date as run_score_date
from mlplatform.settings import load_settings
from mlplatform.steps import FEATURES, TRAINER_CPU, step, step_dir
from mlplatform.xcom import pull, renders_as

SETTINGS = load_settings()
SCORE_DATE = pull("resolve_score_date")


def from_table_or_champion(name: str) -> str:
    """A label-source column: the Param for a labels table, the champion's own column for its feature table."""
    return f"{{% if params.features_table %}}{pull('resolve_champion', name)}{{% else %}}{{{{ params.{name} or '' }}}}{{% endif %}}"


@dag(
    dag_id="model_monitoring",
    schedule="0 7 * * *",  # daily 07:00 UTC, after the day's batch prediction
    **dag_kwargs(SETTINGS, stage="monitoring", start_date=datetime(2026, 1, 4, tzinfo=UTC), doc_md=__doc__),
    params=in_sections({
        "score_date": date_param("Score date to monitor (YYYY-MM-DD); empty: the run's date."),
        "psi_threshold": Param(0.2, type="number", minimum=0.01, maximum=10.0,
                               description="Drift when a feature's or the scores' PSI exceeds this."),
        "min_rows": Param(100, type="integer", minimum=1,
                          description="Fewer rows than this: no drift, rollback or A/B verdict."),
        "rollback_margin": Param(0.01, type="number", minimum=0.0, maximum=0.5,
                                 description="Roll back when the previous champion's AUC is higher by more."),
        "ab_margin": Param(0.0, type="number", minimum=0.0, maximum=0.5,
                           description="AUC the challenger arm must add to be promoted."),
        # Tenure-like features grow with the calendar for every entity, so against the training reference they
        # always look drifted; they are left out by default.
        "drift_ignore_features": Param(
            "days_since_first_event,days_since_signup", type=OPTIONAL, pattern=r"^[A-Za-z0-9_,]*$",
            description="Comma-separated features left out of the drift check (e.g. ones that grow with time).",
        ),
        **relation_params("labels", "churn_labels", "Warehouse table of realised labels."),
        **column_params(entity_key="customer_id", label_column="churned"),
        "snapshot_column": optional_column_param(
            "snapshot_ts", "Labels table: the date each label is observed at (empty when every row is of the score date)."
        ),
        "features_table": optional_table_param(
            "For a champion trained on a ready-made feature table: read the realised labels from it, with the "
            "champion's snapshot and label columns. Empty: the labels table above."
        ),
    }, MONITORING_FORM),
)
def model_monitoring():
    @task(retries=0)
    @renders_as(SAMPLE_DATE)
    def resolve_score_date(params=None, dag_run=None, data_interval_end=None) -> str:
        """The date to monitor: the `score_date` Param, else the date the run was due (UTC)."""
        return run_score_date(params, dag_run, data_interval_end)

    score_date = resolve_score_date()

    @task(retries=0, multiple_outputs=True)
    @renders_as(scoring.SAMPLE_TRAINED_ON)
    def resolve_champion(params=None) -> dict:
        """The champion's task and source (its training snapshot): how its realised labels are read."""
        return scoring.champion_trained_on(params["features_table"])

    champion = resolve_champion()
    # The realised labels of the score date, read from the warehouse by the features image.
    extract_labels = step(
        "extract_labels",
        FEATURES,
        [
            "extract-labels",
            "--score-date", SCORE_DATE,
            "{{ '--features-table' if params.features_table else "
            "('--labels-query' if params.labels_query else '--labels-table') }}",
            "{{ params.features_table or params.labels_query or params.labels_table }}",
            *param_args("entity_key"),
            "--snapshot-column", from_table_or_champion("snapshot_column"),
            "--label-column", from_table_or_champion("label_column"),
            "--task", pull("resolve_champion", "task"),
        ],
    )
    monitor = step(
        "monitor",
        TRAINER_CPU,
        [
            "monitor",
            "--model-name", SETTINGS.registered_model_name,
            "--score-date", SCORE_DATE,
            "--labels", step_dir("extract_labels"),
            *param_args("psi_threshold", "min_rows", "rollback_margin", "ab_margin"),
            "--ignore-features", "{{ params.drift_ignore_features or '' }}",
        ],
    )

    @task
    def read_report() -> dict:
        """The monitor step's manifest (from storage), passed on as the one small XCom."""
        return monitoring.read_report()

    @task(outlets=[DRIFT_ASSET])
    def emit_retrain_signal(report: dict, dag=None, run_id=None) -> list[str]:
        """Succeeds (→ one event on the drift Asset → a training run) only when drift was detected."""
        return monitoring.emit_retrain_signal(report, dag.dag_id, run_id)

    @task
    def rollback_if_degraded(report: dict, dag=None, run_id=None) -> dict:
        """Champion → previous champion when the report recommends it (audited alias move + deployment)."""
        return monitoring.rollback_if_degraded(report, dag.dag_id, run_id)

    # none_failed: runs whether the rollback ran or was skipped (it is skipped on most days).
    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def decide_ab_test(report: dict, dag=None, run_id=None, ti=None) -> dict:
        """End a running A/B test with the report's decision: promote the challenger or keep the champion."""
        rolled_back = bool(ti.xcom_pull(task_ids="rollback_if_degraded"))
        return monitoring.decide_ab_test(report, rolled_back, dag.dag_id, run_id)

    report = read_report()
    rolled_back = rollback_if_degraded(report)
    chain(score_date, champion, extract_labels, monitor, report)
    emit_retrain_signal(report)
    rolled_back >> decide_ab_test(report)


model_monitoring()

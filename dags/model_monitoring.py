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

The measuring is one step (`python -m trainer monitor`, pod built by `mlplatform.steps`); the tasks after
it only read its manifest and act.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from airflow.sdk import Param, TriggerRule, chain, dag, task
from airflow.sdk.exceptions import AirflowSkipException
from mlplatform.defaults import dag_kwargs, date_param
from mlplatform.assets import DRIFT_ASSET
from mlplatform.settings import load_settings
from mlplatform.steps import TRAINER_CPU, step

SETTINGS = load_settings()
# The monitor step reads realised labels from the warehouse: the trainer's CPU pod, with the warehouse secret.
TRAINER_CPU_WAREHOUSE = dataclasses.replace(TRAINER_CPU, needs_warehouse=True)
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


@dag(
    dag_id="model_monitoring",
    schedule="0 7 * * *",  # daily 07:00 UTC, after the day's batch prediction
    start_date=datetime(2026, 1, 4, tzinfo=UTC),
    doc_md=__doc__,
    tags=["ml", "monitoring", "customer-churn"],
    **dag_kwargs(SETTINGS),
    params={
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
            "days_since_first_event,days_since_signup", type="string", pattern=r"^[A-Za-z0-9_,]*$",
            description="Comma-separated features left out of the drift check (e.g. ones that grow with time).",
        ),
        "labels_table": Param("churn_labels", type="string", description="Warehouse table of realised labels."),
        "labels_query": Param("", type="string", description="SQL query for labels; overrides labels_table."),
        "entity_key": Param("customer_id", type="string", pattern=IDENTIFIER),
        "snapshot_column": Param("snapshot_ts", type="string", pattern=IDENTIFIER),
        "label_column": Param("churned", type="string", pattern=IDENTIFIER),
    },
)
def model_monitoring():
    @task(retries=0)
    def resolve_score_date(params=None, dag_run=None, data_interval_end=None) -> str:
        """The date to monitor: the `score_date` Param, else the date the run was due (UTC)."""
        if params["score_date"]:
            return params["score_date"]
        moment = data_interval_end or dag_run.run_after  # API-triggered runs have no logical date
        return moment.astimezone(UTC).date().isoformat()

    score_date = resolve_score_date()
    monitor = step(
        "monitor",
        TRAINER_CPU_WAREHOUSE,
        [
            "monitor",
            "--model-name", SETTINGS.registered_model_name,
            "--score-date", "{{ ti.xcom_pull(task_ids='resolve_score_date') }}",
            "--predictions-root", f"{SETTINGS.artifact_root}/predictions",
            "{{ '--labels-query' if params.labels_query else '--labels-table' }}",
            "{{ params.labels_query or params.labels_table }}",
            "--entity-key", "{{ params.entity_key }}",
            "--snapshot-column", "{{ params.snapshot_column }}",
            "--label-column", "{{ params.label_column }}",
            "--psi-threshold", "{{ params.psi_threshold }}",
            "--min-rows", "{{ params.min_rows }}",
            "--rollback-margin", "{{ params.rollback_margin }}",
            "--ab-margin", "{{ params.ab_margin }}",
            "--ignore-features", "{{ params.drift_ignore_features }}",
        ],
    )

    @task
    def read_report() -> dict:
        """The monitor step's manifest (from storage), passed on as the one small XCom."""
        from mlplatform.steps import read_step_manifest

        report = read_step_manifest("monitor")
        print(
            f"{report['model_name']} {report['score_date']}: drift {report['drift_detected']} "
            f"(breached {report['breached_features']}, prediction PSI {report['prediction_psi']}); "
            f"realised {report['realised']}; rollback {report['rollback_recommended']}: "
            f"{report['rollback_reason']}; A/B {report['ab']}"
        )
        return report

    @task(outlets=[DRIFT_ASSET])
    def emit_retrain_signal(report: dict, dag=None, run_id=None) -> list[str]:
        """Succeeds (→ one event on the drift Asset → a training run) only when drift was detected."""
        from mlplatform import alerts

        if not report["drift_detected"]:
            raise AirflowSkipException(
                "no drift: " + (report.get("drift_note") or f"every PSI <= {report['thresholds']['psi']}")
            )
        alerts.drift_alert(dag.dag_id, run_id, report)
        return report["breached_features"]

    @task
    def rollback_if_degraded(report: dict, dag=None, run_id=None) -> dict:
        """Champion → previous champion when the report recommends it (audited alias move + deployment)."""
        from dataclasses import asdict

        from mlplatform import alerts, deployment, registry

        if not report["rollback_recommended"]:
            raise AirflowSkipException(f"no rollback: {report['rollback_reason']}")
        model, judged = SETTINGS.registered_model_name, report["realised"]["champion"]["version"]
        current = registry.alias_version(SETTINGS.mlflow_tracking_uri, model, registry.CHAMPION)
        if current != judged:  # a retry after the move, or the alias moved since: never swap back
            raise AirflowSkipException(f"champion is v{current}, not the judged v{judged}: nothing to roll back")
        move = registry.rollback(
            SETTINGS.mlflow_tracking_uri, SETTINGS.artifact_root, model, reason=report["rollback_reason"],
            dag_id=dag.dag_id, run_id=run_id, metrics={"realised": report["realised"], "date": report["score_date"]},
        )
        alerts.rollback_alert(asdict(move))
        deployment.record_deployment(
            SETTINGS.artifact_root, model, move.to_version, mode="full", dag_id=dag.dag_id, run_id=run_id
        )
        return asdict(move)

    # none_failed: runs whether the rollback ran or was skipped (it is skipped on most days).
    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def decide_ab_test(report: dict, dag=None, run_id=None, ti=None) -> dict:
        """End a running A/B test with the report's decision: promote the challenger or keep the champion."""
        from dataclasses import asdict

        from mlplatform import deployment, registry

        model = SETTINGS.registered_model_name
        try:
            record = deployment.read_deployment(SETTINGS.artifact_root, model)
        except FileNotFoundError:
            record = {}
        ab = report.get("ab") or {}
        if record.get("mode") != "ab_test":
            raise AirflowSkipException("no A/B test running")
        if ab.get("decision") not in ("promote", "keep"):
            raise AirflowSkipException(f"A/B test continues: {ab.get('decision') or 'no labelled arms yet'}")
        if ti.xcom_pull(task_ids="rollback_if_degraded"):
            raise AirflowSkipException("the champion was just rolled back: the A/B test is decided next time")
        # The version under test is the one the deployment record serves; the `challenger` alias moves with
        # every training run, rejected ones included.
        challenger = record.get("challenger_version")
        if challenger is None:
            raise AirflowSkipException("the A/B deployment record names no challenger: nothing to decide")
        reason = (
            f"A/B on {report['score_date']}: challenger AUC {ab['challenger_auc']} vs champion "
            f"{ab['champion_auc']} (rows {ab['rows']}, margin {ab['margin']}) → {ab['decision']}"
        )
        move_kwargs = {"reason": reason, "dag_id": dag.dag_id, "run_id": run_id, "metrics": {"ab": ab}}
        if ab["decision"] == "promote":
            move = registry.promote(SETTINGS.mlflow_tracking_uri, SETTINGS.artifact_root, model, challenger,
                                    **move_kwargs)
        else:
            move = registry.reject(SETTINGS.mlflow_tracking_uri, SETTINGS.artifact_root, model, challenger,
                                   **move_kwargs)
        deployment.record_deployment(
            SETTINGS.artifact_root, model, move.to_version, mode="full", dag_id=dag.dag_id, run_id=run_id
        )
        print(reason)
        return asdict(move)

    report = read_report()
    rolled_back = rollback_if_degraded(report)
    chain(score_date, monitor, report)
    emit_retrain_signal(report)
    rolled_back >> decide_ab_test(report)


model_monitoring()

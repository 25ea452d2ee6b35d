"""The monitoring DAG's Airflow-side tasks: act on the monitor step's report.

The monitor step (trainer image) measures and decides (``mlcontract.rules``); these functions only read its
``MonitorManifest`` and act: signal a retrain, roll the champion back, end an A/B test. A task with nothing to
do is skipped (``AirflowSkipException``) with the reason in its log.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException
from mlcontract.manifests import MonitorManifest
from mlcontract.names import CHAMPION
from mlcontract.rules import KEEP, PROMOTE, ROLLBACK

from mlplatform import alerts, deployment, registry
from mlplatform.deployment import Deployment
from mlplatform.settings import Settings, load_settings
from mlplatform.steps import read_step_manifest


def summary_line(report: MonitorManifest) -> str:
    ab = f"{report.ab.action}: {report.ab.reason}" if report.ab else None
    return (
        f"{report.model_name} {report.score_date}: drift {report.drift_detected} "
        f"(breached {report.breached_features}, prediction PSI {report.prediction_psi}); "
        f"realised {report.realised.model_dump(mode='json')}; rollback {report.rollback.acts}: "
        f"{report.rollback.reason}; A/B {ab}"
    )


def read_report() -> dict[str, Any]:
    """The monitor step's manifest (from storage), passed on as the one small XCom."""
    report = read_step_manifest("monitor", MonitorManifest)
    print(summary_line(report))
    return report.model_dump(mode="json")


def emit_retrain_signal(report: dict[str, Any], dag_id: str, run_id: str) -> list[str]:
    """Succeeds (→ one event on the drift Asset → a training run) only when drift was detected."""
    monitored = MonitorManifest.parse(report)
    if not monitored.drift_detected:
        raise AirflowSkipException("no drift: " + (monitored.drift_note or f"every PSI <= {monitored.thresholds.psi}"))
    alerts.drift_alert(dag_id, run_id, report)
    return monitored.breached_features


def rollback_if_degraded(report: dict[str, Any], dag_id: str, run_id: str,
                         settings: Settings | None = None) -> dict[str, Any]:
    """Champion → previous champion when the report's rollback decision says so (audited move + deployment)."""
    settings = settings or load_settings()
    monitored = MonitorManifest.parse(report)
    decision = monitored.rollback
    if decision.action != ROLLBACK:
        raise AirflowSkipException(f"no rollback: {decision.reason}")
    model, judged = settings.registered_model_name, decision.incumbent.version
    current = registry.alias_version(settings.mlflow_tracking_uri, model, CHAMPION)
    if current != judged:  # a retry after the move, or the alias moved since: never swap back
        raise AirflowSkipException(f"champion is v{current}, not the judged v{judged}: nothing to roll back")
    move = registry.rollback(
        settings.mlflow_tracking_uri, settings.artifact_root, model, reason=decision.reason, dag_id=dag_id,
        run_id=run_id, metrics={"realised": report["realised"], "date": monitored.score_date},
    )
    alerts.rollback_alert(asdict(move))
    deployment.full_deployment(settings.artifact_root, model, move.to_version, dag_id=dag_id, run_id=run_id)
    return asdict(move)


def ab_test_blocker(record: Deployment | None, report: MonitorManifest, rolled_back: bool) -> str | None:
    """Why a running A/B test cannot be decided today (the task is skipped), or None to decide it."""
    if record is None or not record.ab_test:
        return "no A/B test running"
    if report.ab is None or report.ab.action not in (PROMOTE, KEEP):
        return f"A/B test continues: {report.ab.reason if report.ab else 'no labelled arms yet'}"
    if rolled_back:
        return "the champion was just rolled back: the A/B test is decided next time"
    # The version under test is the one the deployment record serves; the `challenger` alias moves with
    # every training run, rejected ones included.
    if record.challenger_version is None:
        return "the A/B deployment record names no challenger: nothing to decide"
    return None


def decide_ab_test(report: dict[str, Any], rolled_back: bool, dag_id: str, run_id: str,
                   settings: Settings | None = None) -> dict[str, Any]:
    """End a running A/B test with the report's decision: promote the challenger or keep the champion."""
    settings = settings or load_settings()
    monitored = MonitorManifest.parse(report)
    model = settings.registered_model_name
    record = deployment.read_deployment(settings.artifact_root, model)
    blocker = ab_test_blocker(record, monitored, rolled_back)
    if blocker:
        raise AirflowSkipException(blocker)
    ab = monitored.ab
    reason = f"A/B on {monitored.score_date}: {ab.reason} → {ab.action}"
    move_with = registry.promote if ab.action == PROMOTE else registry.reject
    move = move_with(settings.mlflow_tracking_uri, settings.artifact_root, model, record.challenger_version,
                     reason=reason, dag_id=dag_id, run_id=run_id, metrics={"ab": report["ab"]})
    deployment.full_deployment(settings.artifact_root, model, move.to_version, dag_id=dag_id, run_id=run_id)
    print(reason)
    return asdict(move)

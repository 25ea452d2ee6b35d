"""Airflow Assets that connect the DAGs: an event on ``DRIFT_ASSET`` asks for a retrain.

``model_monitoring``'s ``emit_retrain_signal`` task has it as an outlet: the task succeeds (one asset event)
only when drift is detected and skips otherwise (no event). ``ml_model_training`` is scheduled on its weekly
cron *or* on this asset (``AssetOrTimeSchedule``), so drift retrains without waiting for Sunday.
"""

from __future__ import annotations

from airflow.sdk import Asset

from mlplatform.settings import load_settings

_MODEL = load_settings().registered_model_name

DRIFT_ASSET = Asset(
    name=f"drift-{_MODEL}",
    uri=f"mlplatform://drift/{_MODEL}",
    group="mlplatform",
    extra={"meaning": "input or prediction drift of the served model: retrain requested"},
)

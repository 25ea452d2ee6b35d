"""What every DAG of the platform shares: retries, failure alerts, one run at a time, docs and tags."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from mlplatform.alerts import dag_failure_alert, task_failure_alert
from mlplatform.settings import Settings

PROJECT_TAG = "customer-churn"


def dag_kwargs(settings: Settings, *, stage: str, start_date: datetime, doc_md: str | None) -> dict[str, Any]:
    """``@dag`` arguments of a platform DAG; ``stage`` (training, scoring, monitoring) is one of its tags."""
    return {
        "start_date": start_date,
        "doc_md": doc_md,
        "tags": ["ml", stage, PROJECT_TAG],
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {
            "owner": "ml-platform",
            "retries": settings.task_retries,
            "retry_delay": timedelta(minutes=2),
            "on_failure_callback": task_failure_alert,
        },
        "on_failure_callback": dag_failure_alert,
    }

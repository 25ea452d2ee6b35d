"""What every DAG of the platform shares: retries, failure alerts, one run at a time, the date Param."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param

from mlplatform.alerts import dag_failure_alert, task_failure_alert
from mlplatform.settings import Settings

DATE_PATTERN = r"^(|\d{4}-\d{2}-\d{2})$"


def dag_kwargs(settings: Settings) -> dict[str, Any]:
    return {
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


def date_param(description: str) -> Param:
    """A YYYY-MM-DD date, empty meaning the run's own date."""
    return Param("", type="string", pattern=DATE_PATTERN, description=description)

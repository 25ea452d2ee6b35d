"""Params the DAGs share, and the step arguments rendered from them.

One definition of each form field (the warehouse source, column names, the date) so that the trigger forms
of the DAGs validate the same way, and one template for "a query, when given, replaces the table".
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from airflow.sdk import Param
from mlcontract.source import COLUMN_PATTERN

DATE_PATTERN = r"^(|\d{4}-\d{2}-\d{2})$"
OPTIONAL_COLUMN_PATTERN = f"^(|{COLUMN_PATTERN.removeprefix('^').removesuffix('$')})$"
QUERY_DESCRIPTIONS = {
    "events": "SQL query for events; overrides events_table when set.",
    "labels": "SQL query for labels; overrides labels_table.",
}
EVENTS_TABLE_DESCRIPTION = "Warehouse table of timestamped events."
SAMPLE_DATE = "2026-01-04"  # what a resolved date renders as in `make render`


def date_param(description: str) -> Param:
    """A YYYY-MM-DD date, empty meaning the run's own date."""
    return Param("", type="string", pattern=DATE_PATTERN, description=description)


def relation_params(kind: str, table: str, description: str) -> dict[str, Param]:
    """``{kind}_table`` and ``{kind}_query``: where a relation comes from (the query wins when set)."""
    return {
        f"{kind}_table": Param(table, type="string", description=description),
        f"{kind}_query": Param("", type="string", description=QUERY_DESCRIPTIONS[kind]),
    }


def column_params(**defaults: str) -> dict[str, Param]:
    """Column names of the user's warehouse (they go into SQL: plain identifiers only)."""
    return {name: Param(default, type="string", pattern=COLUMN_PATTERN) for name, default in defaults.items()}


def optional_column_param(default: str, description: str) -> Param:
    return Param(default, type="string", pattern=OPTIONAL_COLUMN_PATTERN, description=description)


def relation_args(kind: str) -> list[str]:
    """The two CLI arguments of a relation: ``--{kind}-query Q`` when a query is set, else ``--{kind}-table T``."""
    return [
        f"{{{{ '--{kind}-query' if params.{kind}_query else '--{kind}-table' }}}}",
        f"{{{{ params.{kind}_query or params.{kind}_table }}}}",
    ]


def param_args(*names: str) -> list[str]:
    """``--entity-key {{ params.entity_key }} ...``: Params passed to a step under their own names."""
    arguments: list[str] = []
    for name in names:
        arguments += [f"--{name.replace('_', '-')}", f"{{{{ params.{name} }}}}"]
    return arguments


def score_date(params: dict[str, Any], dag_run: Any, data_interval_end: Any) -> str:
    """The ``score_date`` Param, else the date the run was due (UTC).

    API-triggered runs have no logical date (no data interval): they fall back to when the run was due.
    """
    if params["score_date"]:
        return params["score_date"]
    moment = data_interval_end or dag_run.run_after
    return moment.astimezone(UTC).date().isoformat()

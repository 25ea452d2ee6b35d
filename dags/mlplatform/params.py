"""Params the DAGs share, and the step arguments rendered from them.

One definition of each form field (the warehouse source, column names, the date) so that the trigger forms
of the DAGs validate the same way, and one template for "a query, when given, replaces the table".

Airflow's trigger form treats a Param whose type does not include "null" as required, and an empty field as
missing (it sends ``null``): every optional field is ``type=["null", "string"]`` with a ``None`` default, still
checked by its pattern when given. Its templates render ``None`` and ``''`` alike, as an empty argument.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from airflow.sdk import Param
from mlcontract.names import AUTO_SPLIT, BINARY, EVENTS_SOURCE, FEATURE_TABLE_SOURCE, SPLIT_METHODS, TASKS
from mlcontract.source import COLUMN_PATTERN, IDENTIFIER_PATTERN


def optional_pattern(pattern: str) -> str:
    """``pattern`` (anchored) or the empty string."""
    return f"^(|{pattern.removeprefix('^').removesuffix('$')})$"


DATE_PATTERN = r"^(|\d{4}-\d{2}-\d{2})$"
OPTIONAL_COLUMN_PATTERN = optional_pattern(COLUMN_PATTERN)
QUERY_DESCRIPTIONS = {
    "events": "SQL query returning the events, instead of a table: when set, events_table is ignored.",
    "labels": "SQL query returning the labels, instead of a table: when set, labels_table is ignored.",
    "features": "SQL query returning the feature table, instead of features_table: give one of the two, not "
    "both (a run given both fails at extract, saying so).",
}
# Jinja test of the training source: a ready-made feature table instead of events and labels
FEATURE_TABLE_TEMPLATE = f"params.source_kind == '{FEATURE_TABLE_SOURCE}'"
EVENTS_TABLE_DESCRIPTION = "Warehouse table of timestamped events."
SAMPLE_DATE = "2026-01-04"  # what a resolved date renders as in `make render`
OPTIONAL = ["null", "string"]  # an optional string field of the form (empty: null)
OPTIONAL_IDENTIFIER_PATTERN = optional_pattern(IDENTIFIER_PATTERN)
# A byte size as the trainer reads it (mlcontract.cli.parse_size: 6GiB, 512MiB, 2G, bytes), or empty. JSON
# Schema patterns have no flags: the units' case is spelt out.
OPTIONAL_SIZE_PATTERN = r"^(|\s*\d+(\.\d+)?\s*([KkMmGgTt][Ii]?[Bb]?|[Bb])?\s*)$"

# Sections of the trigger forms, in pipeline order (Airflow shows each as a collapsible group).
TRAINING_FORM = {
    "Source": ("source_kind", "features_table", "features_query", "events_table", "events_query", "labels_table",
               "labels_query", "entities_table", "entity_key", "timestamp_column", "snapshot_column",
               "label_column", "cutoff", "min_event_rows"),
    "Features": ("feature_spec", "split", "split_seed"),
    "Training": ("task", "n_trials", "max_boost_rounds", "seed", "memory_budget"),
    "Promotion": ("promotion_threshold", "promotion_margin", "allow_incomparable_promotion"),
    "Deployment": ("deploy_mode", "challenger_share"),
}
SCORING_FORM = {
    "Scoring": ("score_date",),
    "Source": ("features_table", "events_table", "events_query", "entities_table", "entity_key",
               "timestamp_column", "signup_column"),
    "Output": ("predictions_table",),
}
MONITORING_FORM = {
    "Monitoring": ("score_date", "psi_threshold", "min_rows", "drift_ignore_features", "rollback_margin",
                   "ab_margin"),
    "Realised labels": ("labels_table", "labels_query", "features_table", "entity_key", "label_column",
                        "snapshot_column"),
}


def in_sections(params: dict[str, Param], form: dict[str, tuple[str, ...]]) -> dict[str, Param]:
    """The Params in the form's sections, in its order (a Param named in no section stays last, unsectioned)."""
    ordered = {}
    for section, names in form.items():
        for name in names:
            params[name].schema["section"] = section
            ordered[name] = params[name]
    return ordered | params


def date_param(description: str) -> Param:
    """A YYYY-MM-DD date, empty meaning the run's own date."""
    return Param(None, type=OPTIONAL, pattern=DATE_PATTERN, description=description)


def relation_params(kind: str, table: str, description: str) -> dict[str, Param]:
    """``{kind}_table`` and ``{kind}_query``: where a relation comes from (the query wins when set)."""
    return {
        f"{kind}_table": Param(table, type="string", pattern=IDENTIFIER_PATTERN, description=description),
        f"{kind}_query": Param(None, type=OPTIONAL, description=QUERY_DESCRIPTIONS[kind]),
    }


def optional_table_param(description: str) -> Param:
    """A warehouse table used only when given (null or empty: unused)."""
    return Param(None, type=OPTIONAL, pattern=OPTIONAL_IDENTIFIER_PATTERN, description=description)


def optional_entities_param(description: str) -> Param:
    """The entities table: the demo's ``customers`` by default, empty (null or '') for none."""
    return Param("customers", type=OPTIONAL, pattern=OPTIONAL_IDENTIFIER_PATTERN, description=description)


def optional_relation_params(kind: str, description: str) -> dict[str, Param]:
    """``{kind}_table`` and ``{kind}_query`` of a relation that is used only when asked for (null: unused)."""
    return {
        f"{kind}_table": optional_table_param(description),
        f"{kind}_query": Param(None, type=OPTIONAL, description=QUERY_DESCRIPTIONS[kind]),
    }


def training_source_params() -> dict[str, Param]:
    """What the training data is: events and labels (features computed), or a ready-made feature table."""
    return {
        "source_kind": Param(
            EVENTS_SOURCE, type="string", enum=[EVENTS_SOURCE, FEATURE_TABLE_SOURCE],
            description="events: features are computed from a table of timestamped events and a table of "
            "labels. feature_table: one table already holds a row per entity (or per entity and snapshot date) "
            "with the label and the feature columns.",
        ),
        **optional_relation_params(
            "features", "Ready-made feature table (source_kind feature_table; or features_query, not both): "
            "entity key, label, optional snapshot column, and feature columns used as they are."
        ),
    }


def learning_params() -> dict[str, Param]:
    """How the features are made and what is learnt: feature spec, task, train/valid/test split."""
    return {
        "feature_spec": Param(
            None, type=["null", "object"],
            description="Feature spec (JSON object, version 1): windows, aggregations per events column, how "
            "entity attributes and feature-table columns are used. Empty: inferred from the column types.",
        ),
        "task": Param(
            BINARY, type="string", enum=list(TASKS),
            description="binary: a 0/1 label (probability of 1). multiclass: one of several labels. "
            "regression: a number.",
        ),
        "split": Param(
            AUTO_SPLIT, type="string", enum=list(SPLIT_METHODS),
            description="time: the latest snapshot date is the test set, the one before it validation. entity: "
            "a seeded hash of the entity key splits the entities 70/15/15. auto: time with 3 or more snapshot "
            "dates, else entity.",
        ),
        "split_seed": Param(42, type="integer", minimum=0, description="Seed of the entity split."),
    }


def memory_budget_param() -> Param:
    """The trainer's memory budget for this run (empty: the deployment's, TRAINER_MEMORY_BUDGET)."""
    return Param(
        None, type=OPTIONAL, pattern=OPTIONAL_SIZE_PATTERN,
        description="Memory the training data may take in a trial or the final fit, e.g. 6GiB or 512MiB: a bigger "
        "train + valid split is read batch by batch into xgboost's external memory instead. Empty: the "
        "deployment's budget (TRAINER_MEMORY_BUDGET), else half the trainer pod's memory.",
    )


def memory_budget(params: dict[str, Any]) -> str:
    """The ``memory_budget`` Param, checked as the trainer reads it ('' when not given); ValueError naming the
    Param otherwise."""
    from mlcontract.cli import parse_size

    value = (params.get("memory_budget") or "").strip()
    if value:
        try:
            parse_size(value)
        except ValueError as error:
            raise ValueError(f"Param memory_budget: {error}") from None
    return value


def column_params(**defaults: str) -> dict[str, Param]:
    """Column names of the user's warehouse (they go into SQL: plain identifiers only)."""
    return {name: Param(default, type="string", pattern=COLUMN_PATTERN) for name, default in defaults.items()}


def optional_column_param(default: str, description: str) -> Param:
    return Param(default, type=OPTIONAL, pattern=OPTIONAL_COLUMN_PATTERN, description=description)


def relation_args(kind: str, when: str | None = None) -> list[str]:
    """The two CLI arguments of a relation: ``--{kind}-query Q`` when a query is set, else ``--{kind}-table T``.

    With ``when`` (a Jinja test) the relation is passed empty unless it holds: a step's argument list has a
    fixed length, so an unused source is given as ``''`` (the CLIs read an empty relation as none).
    """
    value = f"params.{kind}_query or params.{kind}_table"
    return [
        f"{{{{ '--{kind}-query' if params.{kind}_query else '--{kind}-table' }}}}",
        f"{{{{ {value} }}}}" if when is None else f"{{{{ ({value} or '') if {when} else '' }}}}",
    ]


def exclusive_relation_args(kind: str, when: str) -> list[str]:
    """``relation_args`` of a relation with no default table, where a table and a query are exclusive.

    When both are given they are passed as ``--{kind}-table=T`` ``--{kind}-query=Q`` (still two arguments), and
    the step's CLI refuses the pair with its own message ("not allowed with"): a run never silently reads one.
    """
    table, query = f"params.{kind}_table", f"params.{kind}_query"
    both = f"{table} and {query} and {when}"
    return [
        f"{{{{ '--{kind}-table=' ~ {table} if {both} else '--{kind}-query' if {query} else '--{kind}-table' }}}}",
        f"{{{{ '--{kind}-query=' ~ {query} if {both} else ({query} or {table} or '') if {when} else '' }}}}",
    ]


def training_source_args() -> list[str]:
    """extract's source: the feature table's relation, or the events, labels and entities relations."""
    events = f"not {FEATURE_TABLE_TEMPLATE}"
    return [
        *exclusive_relation_args("features", FEATURE_TABLE_TEMPLATE),
        *relation_args("events", events),
        *relation_args("labels", events),
        "--entities-table", f"{{{{ (params.entities_table or '') if {events} else '' }}}}",
    ]


def json_arg(name: str) -> str:
    """An object Param as one JSON argument; empty when not given."""
    return f"{{{{ params.{name} | tojson if params.{name} else '' }}}}"


def param_args(*names: str) -> list[str]:
    """``--entity-key {{ params.entity_key }} ...``: Params passed to a step under their own names."""
    arguments: list[str] = []
    for name in names:
        arguments += [f"--{name.replace('_', '-')}", f"{{{{ params.{name} }}}}"]
    return arguments


def optional_args(*names: str) -> list[str]:
    """``param_args`` of optional string Params: null (the form's empty field) is passed as ``''``."""
    arguments: list[str] = []
    for name in names:
        arguments += [f"--{name.replace('_', '-')}", f"{{{{ params.{name} or '' }}}}"]
    return arguments


def score_date(params: dict[str, Any], dag_run: Any, data_interval_end: Any) -> str:
    """The ``score_date`` Param, else the date the run was due (UTC).

    API-triggered runs have no logical date (no data interval): they fall back to when the run was due.
    """
    if params["score_date"]:
        return params["score_date"]
    moment = data_interval_end or dag_run.run_after
    return moment.astimezone(UTC).date().isoformat()

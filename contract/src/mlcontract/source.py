"""The warehouse source: where a step reads (a table or a SQL query per relation) and what the columns
are called there. Identifiers go into SQL, so only plain ones are accepted; a query is the user's own SQL,
which the extract accepts only as one read-only query (checked with a SQL parser, then run in a read-only
session: ``features.extract.query``).

Also :func:`mask_uri`, the one way a URI with credentials is shown in logs, XCom and MLflow.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from mlcontract.errors import SourceError
from mlcontract.names import EVENTS_SOURCE, FEATURE_TABLE_SOURCE

IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*$"
IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
# Column names in the Params form: no schema prefix
COLUMN_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Any query key holding one of these words (api_key, x-amz-signature...); over-masking is the safe error.
SECRET_QUERY = re.compile(r"(?i)([?&][a-z0-9_\-]*(?:passw|secret|token|sig|key|credential)[a-z0-9_\-]*=)[^&#\s]*")
# user:password@ up to the LAST "@", so a password holding "@" or an unencoded "/" is masked whole.
URI_PASSWORD = re.compile(r"(?i)^(?P<head>[a-z][a-z0-9+.\-]*://[^:/?#@\s]*):(?P<password>.+)@")


def check_identifier(value: str | None, option: str) -> str | None:
    """``value`` when it is a plain SQL identifier (or empty); else a SourceError naming the option."""
    if value and not IDENTIFIER.match(value):
        raise SourceError(f"{option} {value!r} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_.]*)")
    return value or None


def mask_uri(uri: str | None) -> str:
    """The URI with its password (and query-string secrets) hidden, safe to log."""
    if not uri:
        return ""
    masked = URI_PASSWORD.sub(lambda match: f"{match['head']}:***@", uri, count=1)
    return SECRET_QUERY.sub(r"\1***", masked)


class _Source(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # the relations that must each come from exactly one of a table or a query
    _relations: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> _Source:
        for kind in self.relations():
            table, query = getattr(self, f"{kind}_table"), getattr(self, f"{kind}_query")
            if bool(table) == bool(query):
                raise SourceError(f"give exactly one of --{kind}-table or --{kind}-query")
        for name, value in self:
            if value and isinstance(value, str) and not name.endswith("_query"):
                check_identifier(value, f"--{name.replace('_', '-')}")
        return self

    def relations(self) -> tuple[str, ...]:
        return self._relations

    def relation(self, kind: str) -> tuple[str | None, str | None]:
        """(table, query) of a relation; at most one of them is set."""
        return getattr(self, f"{kind}_table", None) or None, getattr(self, f"{kind}_query", None) or None

    def queries(self) -> dict[str, str]:
        """The SQL query Params given (``events_query`` -> its text). The extract checks, with a SQL parser
        for the warehouse's dialect, that each is one read-only query before any SQL runs."""
        return {name: value for name, value in self if name.endswith("_query") and value}

    def describe(self) -> dict[str, Any]:
        """The source as recorded in manifests and lineage: only what is set."""
        return {k: v for k, v in self.model_dump().items() if v}


def _feature_table_or_events(data: Any, events_fields: tuple[str, ...], cleared: dict[str, Any]) -> Any:
    """A ready-made feature table replaces the events side of a source: the events fields' defaults are
    dropped (``cleared``), and setting one of them next to a feature table is an error."""
    if not isinstance(data, dict) or not (data.get("features_table") or data.get("features_query")):
        return data
    given = [f"--{name.replace('_', '-')}" for name in events_fields if data.get(name)]
    if given:
        raise SourceError(
            f"give either a feature table (--features-table or --features-query) or events, not both: "
            f"{', '.join(given)} set next to the feature table"
        )
    return {**cleared, **data}


class TrainingSource(_Source):
    """Events and labels (and optional entity attributes) for training, or a ready-made feature table.

    A feature table (``features_table`` / ``features_query``) holds the entity key, the label, an optional
    snapshot column and the feature columns: the events, labels and entities fields are then unused.
    """

    events_table: str | None = "events"
    events_query: str | None = None
    labels_table: str | None = "churn_labels"
    labels_query: str | None = None
    features_table: str | None = None
    features_query: str | None = None
    entities_table: str | None = None
    entity_key: str = "customer_id"
    timestamp_column: str = "event_ts"
    # a feature table may have none (one row per entity)
    snapshot_column: str | None = "snapshot_ts"
    label_column: str = "churned"

    @model_validator(mode="before")
    @classmethod
    def _feature_table(cls, data: Any) -> Any:
        events = ("events_table", "events_query", "labels_table", "labels_query", "entities_table")
        return _feature_table_or_events(data, events, {"events_table": None, "labels_table": None,
                                                       "snapshot_column": None})

    @model_validator(mode="after")
    def _snapshot_column(self) -> TrainingSource:
        if self.kind == EVENTS_SOURCE and not self.snapshot_column:
            raise SourceError("--snapshot-column is required with events and labels (the labels' snapshot date)")
        return self

    @property
    def kind(self) -> str:
        return FEATURE_TABLE_SOURCE if self.features_table or self.features_query else EVENTS_SOURCE

    def relations(self) -> tuple[str, ...]:
        return ("features",) if self.kind == FEATURE_TABLE_SOURCE else ("events", "labels")


class ScoringSource(_Source):
    """The entities to score on a date and their events (training's options, minus labels), or the rows of
    a ready-made feature table (those of the score date when it has a snapshot column; the label column,
    when named and present, is left out)."""

    events_table: str | None = "events"
    events_query: str | None = None
    features_table: str | None = None
    features_query: str | None = None
    entities_table: str | None = "customers"
    entity_key: str = "customer_id"
    timestamp_column: str = "event_ts"
    signup_column: str | None = "signup_ts"
    snapshot_column: str | None = None
    label_column: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _feature_table(cls, data: Any) -> Any:
        events = ("events_table", "events_query", "entities_table", "signup_column")
        return _feature_table_or_events(data, events, {"events_table": None, "entities_table": None,
                                                       "signup_column": None})

    @property
    def kind(self) -> str:
        return FEATURE_TABLE_SOURCE if self.features_table or self.features_query else EVENTS_SOURCE

    def relations(self) -> tuple[str, ...]:
        return ("features",) if self.kind == FEATURE_TABLE_SOURCE else ("events",)


class LabelSource(_Source):
    """Realised labels, for monitoring: one row per (entity, snapshot date); a feature table's label column
    works the same way. Without a snapshot column every row is a label of the score date."""

    _relations = ("labels",)

    labels_table: str | None = "churn_labels"
    labels_query: str | None = None
    entity_key: str = "customer_id"
    snapshot_column: str | None = "snapshot_ts"
    label_column: str = "churned"

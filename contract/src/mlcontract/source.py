"""The warehouse source: where a step reads (a table or a SQL query per relation) and what the columns
are called there. Identifiers go into SQL, so only plain ones are accepted; a query is the user's own SQL.

Also :func:`mask_uri`, the one way a URI with credentials is shown in logs, XCom and MLflow.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from mlcontract.errors import SourceError

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

    # relation kind -> (table field, query field); identifier fields -> CLI option
    _relations: tuple[str, ...] = ()
    _optional_relations: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> _Source:
        for kind in self._relations:
            table, query = getattr(self, f"{kind}_table"), getattr(self, f"{kind}_query")
            if bool(table) == bool(query):
                raise SourceError(f"give exactly one of --{kind}-table or --{kind}-query")
        for name, value in self:
            if value and not name.endswith("_query"):
                check_identifier(value, f"--{name.replace('_', '-')}")
        return self

    def relation(self, kind: str) -> tuple[str | None, str | None]:
        """(table, query) of a relation; at most one of them is set."""
        return getattr(self, f"{kind}_table", None) or None, getattr(self, f"{kind}_query", None) or None

    def describe(self) -> dict[str, Any]:
        """The source as recorded in manifests and lineage: only what is set."""
        return {k: v for k, v in self.model_dump().items() if v}


class TrainingSource(_Source):
    """Events and labels (and optional entity attributes) for training."""

    _relations = ("events", "labels")

    events_table: str | None = "events"
    events_query: str | None = None
    labels_table: str | None = "churn_labels"
    labels_query: str | None = None
    entities_table: str | None = None
    entity_key: str = "customer_id"
    timestamp_column: str = "event_ts"
    snapshot_column: str = "snapshot_ts"
    label_column: str = "churned"


class ScoringSource(_Source):
    """The entities to score on a date and their events (training's options, minus labels)."""

    _relations = ("events",)

    events_table: str | None = "events"
    events_query: str | None = None
    entities_table: str | None = "customers"
    entity_key: str = "customer_id"
    timestamp_column: str = "event_ts"
    signup_column: str | None = "signup_ts"


class LabelSource(_Source):
    """Realised labels, for monitoring: one row per (entity, snapshot date)."""

    _relations = ("labels",)

    labels_table: str | None = "churn_labels"
    labels_query: str | None = None
    entity_key: str = "customer_id"
    snapshot_column: str = "snapshot_ts"
    label_column: str = "churned"

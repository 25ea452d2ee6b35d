"""The feature spec: which features the build computes, declared per column, versioned, YAML or JSON.

A :class:`FeatureSpec` names the user's own columns (every column but the canonical ``entity_id``,
``event_ts``, ``snapshot_ts`` and ``label`` keeps its warehouse name through extract)::

    version: 1
    windows_days: [7, 30, 90]
    recency: true            # days_since_last_event
    tenure: true             # days_since_first_event
    ratios: [[30, 90]]       # last 30 d vs the 60 d before: event count and numeric sums
    events:                  # per column of the events
      amount:   {kind: numeric, aggregations: [sum, mean, min, max, std, last]}
      is_promo: {kind: boolean, aggregations: [sum, mean]}
      channel:  {kind: categorical, top_k: 20, aggregations: [count, share]}
      sku:      {kind: high_cardinality, aggregations: [distinct_count]}
      note:     {kind: ignore}
    entity_attributes:       # per column of the entities table
      segment:  {use: one_hot, top_k: 20}
      signup_ts: {use: days_since}
    table_columns: {}        # the same, for the feature columns of a ready-made feature table

It is stored in the snapshot manifest (``feature_config``), so scoring computes the champion's own
features. What each aggregation computes exactly is documented in :mod:`features.engineering.compute`.

**Inference** (:func:`infer_spec`, used when no spec is given) reads the extract's schema and, in one
streaming pass, each column's non-null count and distinct count (exact):

- the entity key, ``event_ts``, the snapshot and the label never become features (they are not even
  columns the spec can name: :func:`check_spec` refuses them);
- numeric events column (integers and floats): ``numeric`` with sum, mean, min, max, std and last;
  an integer column with more than 50 distinct values making up >= 95 % of its non-null rows is an id:
  ``ignore``;
- boolean, or an integer column holding only 0 and 1: ``boolean`` with sum (true count) and mean
  (true share);
- string (or categorical) with at most ``CATEGORICAL_MAX_DISTINCT`` (50) distinct values: ``categorical``,
  ``top_k`` = min(20, distinct), count and share; more distinct values: ``high_cardinality`` with
  distinct_count, unless the column is an id (distinct values >= ``ID_UNIQUE_SHARE`` (95 %) of its
  non-null rows): ``ignore``;
- timestamp or date: ``timestamp`` (the lag ``event_ts - value`` in days, a numeric) with mean, min, max;
- a column that is entirely null, or of another type (lists, structs, binary): ``ignore``;
- windows: 7 and 30 days always, plus each of 90, 180 and 365 days that the history before the
  *earliest* snapshot instant (from the first event) covers, so that every training row has it whole; ``ratios`` [[30, 90]] when 90 is a window;
  ``recency`` and ``tenure`` on;
- entity attributes and the columns of a ready-made feature table: numeric -> ``numeric``, boolean (or
  0/1 integer) -> ``boolean``, timestamp/date -> ``days_since``, string with <= 50 distinct values -> ``one_hot``
  (top_k = min(20, distinct)), any other string (an id, free text) or type -> ``ignore``;
- a ready-made feature table without events gets no event features (empty windows, no recency/tenure).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

import polars as pl
import yaml
from mlcontract.names import ENTITY, EVENT_TS, LABEL, SNAPSHOT
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.errors import SpecError

SPEC_VERSION = 1
CANDIDATE_WINDOWS = (7, 30, 90, 180, 365)
ALWAYS_WINDOWS = (7, 30)
CATEGORICAL_MAX_DISTINCT = 50
DEFAULT_TOP_K = 20
MAX_TOP_K = 1000
ID_UNIQUE_SHARE = 0.95

EventKind = Literal["numeric", "boolean", "categorical", "high_cardinality", "timestamp", "ignore"]
Aggregation = Literal["count", "share", "sum", "mean", "min", "max", "std", "last", "distinct_count"]
AttributeUse = Literal["numeric", "boolean", "one_hot", "days_since", "ignore"]

# What each kind of events column can be aggregated with, and what inference gives it
ALLOWED: dict[str, tuple[str, ...]] = {
    "numeric": ("sum", "mean", "min", "max", "std", "last"),
    "timestamp": ("sum", "mean", "min", "max", "std", "last"),
    "boolean": ("sum", "mean"),
    "categorical": ("count", "share", "distinct_count"),
    "high_cardinality": ("distinct_count",),
    "ignore": (),
}
DEFAULT_AGGREGATIONS: dict[str, tuple[str, ...]] = {
    "numeric": ("sum", "mean", "min", "max", "std", "last"),
    "timestamp": ("mean", "min", "max"),
    "boolean": ("sum", "mean"),
    "categorical": ("count", "share"),
    "high_cardinality": ("distinct_count",),
    "ignore": (),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventColumn(_Strict):
    """How one events column is aggregated over each window."""

    kind: EventKind
    aggregations: list[Aggregation] | None = None  # None: the kind's defaults
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K)  # categorical: the counted values

    @model_validator(mode="after")
    def _fits_kind(self) -> EventColumn:
        wrong = [a for a in self.aggregations or () if a not in ALLOWED[self.kind]]
        if wrong:
            allowed = ", ".join(ALLOWED[self.kind]) or "none"
            raise ValueError(f"aggregation(s) {wrong} do not apply to a {self.kind} column (allowed: {allowed})")
        if self.top_k is not None and self.kind != "categorical":
            raise ValueError(f"top_k applies to categorical columns only, not {self.kind}")
        return self

    @property
    def effective_aggregations(self) -> tuple[str, ...]:
        """The aggregations in a fixed order (the feature columns' order), duplicates dropped."""
        chosen = DEFAULT_AGGREGATIONS[self.kind] if self.aggregations is None else self.aggregations
        return tuple(a for a in ALLOWED[self.kind] if a in chosen)

    @property
    def effective_top_k(self) -> int:
        return DEFAULT_TOP_K if self.top_k is None else self.top_k


class ColumnUse(_Strict):
    """How one entity attribute (or one column of a ready-made feature table) becomes features."""

    use: AttributeUse
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K)  # one_hot: the encoded values

    @model_validator(mode="after")
    def _top_k_for_one_hot(self) -> ColumnUse:
        if self.top_k is not None and self.use != "one_hot":
            raise ValueError(f"top_k applies to one_hot columns only, not {self.use}")
        return self

    @property
    def effective_top_k(self) -> int:
        return DEFAULT_TOP_K if self.top_k is None else self.top_k


class FeatureSpec(_Strict):
    """The declarative feature spec (version 1). Part of the snapshot hash."""

    version: Literal[1] = SPEC_VERSION
    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90])
    recency: bool = True
    tenure: bool = True
    ratios: list[tuple[int, int]] = Field(default_factory=list)
    events: dict[str, EventColumn] = Field(default_factory=dict)
    entity_attributes: dict[str, ColumnUse] = Field(default_factory=dict)
    table_columns: dict[str, ColumnUse] = Field(default_factory=dict)
    # numeric sums are exact fixed-point integers with this many decimals (order-independent)
    numeric_decimals: int = Field(default=6, ge=0, le=9)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if any(w <= 0 for w in self.windows_days):
            raise ValueError(f"windows_days must be positive, got {self.windows_days}")
        if len(set(self.windows_days)) != len(self.windows_days) or self.windows_days != sorted(self.windows_days):
            object.__setattr__(self, "windows_days", sorted(set(self.windows_days)))
        for recent, base in self.ratios:
            if not 0 < recent < base:
                raise ValueError(f"ratio [{recent}, {base}]: the recent window must be shorter than the base one")
            if recent not in self.windows_days or base not in self.windows_days:
                raise ValueError(f"ratio [{recent}, {base}]: both windows must be in windows_days {self.windows_days}")
        if self.events and not self.windows_days:
            raise ValueError("events columns are aggregated over windows: windows_days must not be empty")
        return self

    @property
    def uses_events(self) -> bool:
        """Whether any feature is computed from the events (else the build never reads them)."""
        return bool(self.windows_days or self.recency or self.tenure)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ------------------------------------------------------------------------------------------------ loading


def _error_text(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_spec(payload: Mapping[str, Any], origin: str = "feature spec") -> FeatureSpec:
    """A spec from its dict form (a manifest's ``feature_config``, a parsed file); SpecError if invalid."""
    try:
        return FeatureSpec.model_validate(payload)
    except ValidationError as error:
        raise SpecError(f"{origin}: {_error_text(error)}") from None


def load_spec(text_or_path: str) -> FeatureSpec:
    """A spec from a YAML or JSON file path, or from inline YAML/JSON text (JSON is YAML)."""
    origin = "feature spec"
    text = text_or_path
    if "\n" not in text_or_path and not text_or_path.lstrip().startswith("{") and os.path.isfile(text_or_path):
        origin = f"feature spec {text_or_path}"
        with open(text_or_path, encoding="utf-8") as handle:
            text = handle.read()
    elif text_or_path.strip().endswith((".yaml", ".yml", ".json")) and "\n" not in text_or_path.strip():
        raise SpecError(f"feature spec file {text_or_path!r} does not exist")
    try:
        payload = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{origin} is neither valid YAML nor JSON: {error}") from None
    if not isinstance(payload, dict):
        raise SpecError(f"{origin} must be a mapping (version, windows_days, events...), got {text[:80]!r}")
    return parse_spec(payload, origin)


def spec_json(spec: FeatureSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


# ------------------------------------------------------------------------------------------------ checking

_STRING_TYPES = (pl.String, pl.Categorical, pl.Enum)


def _is_string(dtype: pl.DataType) -> bool:
    return isinstance(dtype, _STRING_TYPES) or dtype == pl.String


def _is_timestamp(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Datetime) or dtype == pl.Date


_EVENT_TYPES = {
    "numeric": ("a number", lambda t: t.is_numeric()),
    "timestamp": ("a timestamp or date", _is_timestamp),
    "boolean": ("a boolean (or 0/1 integer)", lambda t: t == pl.Boolean or t.is_integer()),
    "categorical": ("a string, boolean or integer", lambda t: _is_string(t) or t == pl.Boolean or t.is_integer()),
    "high_cardinality": ("a string or integer", lambda t: _is_string(t) or t.is_integer()),
    "ignore": ("anything", lambda t: True),
}
_USE_TYPES = {
    "numeric": ("a number or boolean", lambda t: t.is_numeric() or t == pl.Boolean),
    "boolean": ("a boolean (or 0/1 integer)", lambda t: t == pl.Boolean or t.is_integer()),
    "one_hot": ("a string, boolean or integer", lambda t: _is_string(t) or t == pl.Boolean or t.is_integer()),
    "days_since": ("a timestamp or date", _is_timestamp),
    "ignore": ("anything", lambda t: True),
}


def _reserved(columns: Mapping[str, str]) -> dict[str, str]:
    """The user's names (and the canonical ones) of the columns that are never features."""
    roles = {ENTITY: "the entity key", EVENT_TS: "the event timestamp", SNAPSHOT: "the snapshot column",
             LABEL: "the label"}
    reserved = dict(roles.items())
    for canonical, role in roles.items():
        if canonical in columns:
            reserved[columns[canonical]] = role
    return reserved


def _user(column: str, columns: Mapping[str, str]) -> str:
    return columns.get(column, column)


def check_spec(
    spec: FeatureSpec,
    events_schema: pl.Schema | None,
    entity_schema: pl.Schema | None,
    table_schema: pl.Schema | None = None,
    columns: Mapping[str, str] | None = None,
) -> None:
    """Refuse a spec that does not fit the data: a SpecError naming the user's column and what is wrong.

    ``table_schema``: the spine's feature columns (ready-made feature table); ``columns``: canonical ->
    the user's column names (``ExtractManifest.columns``), so the message speaks the user's terms.
    """
    columns = columns or {}
    reserved = _reserved(columns)
    if spec.uses_events and events_schema is None:
        raise SpecError(
            "feature spec: the extract has no events (a ready-made feature table), so windows_days, recency, "
            "tenure, ratios and events must be empty; describe its columns under table_columns"
        )
    groups: list[tuple[str, str, Mapping[str, Any], pl.Schema | None, dict]] = [
        ("events", "the events", spec.events, events_schema, _EVENT_TYPES),
        ("entity_attributes", "the entities table", spec.entity_attributes, entity_schema, _USE_TYPES),
        ("table_columns", "the feature table", spec.table_columns, table_schema, _USE_TYPES),
    ]
    for section, where, entries, schema, types in groups:
        for name, entry in entries.items():
            if name in reserved:
                raise SpecError(
                    f"feature spec: {section}.{name}: column {name!r} is {reserved[name]}; ids, the event "
                    "timestamp, the snapshot and the label never become features"
                )
            if schema is None:
                raise SpecError(f"feature spec: {section}.{name}: the extract has no {where.removeprefix('the ')}")
            if name not in schema:
                shown = [_user(c, columns) for c in schema.names() if c not in (ENTITY, EVENT_TS, SNAPSHOT, LABEL)]
                raise SpecError(
                    f"feature spec: {section}.{name}: column {name!r} is not in {where} (its columns: {shown})"
                )
            kind = entry.kind if section == "events" else entry.use
            expected, fits = types[kind]
            if not fits(schema[name]):
                raise SpecError(
                    f"feature spec: {section}.{name}: column {name!r} is {schema[name]}, but a {kind} column must "
                    f"be {expected}"
                )


# ------------------------------------------------------------------------------------------------ inference


class _Stats(NamedTuple):
    count: int  # non-null values
    distinct: int  # distinct non-null values (string and integer columns; else 0)
    zero_one: bool  # an integer column holding only 0 and 1 (a boolean, as SQLite and others store one)


def _stats_exprs(schema: pl.Schema, names: list[str]) -> list[pl.Expr]:
    """Non-null count of every column; 0/1-ness of the integer ones (distinct counts: _distinct_queries)."""
    exprs = []
    for i, name in enumerate(names):
        column, integer = pl.col(name), schema[name].is_integer()
        zero_one = (column.min() >= 0) & (column.max() <= 1) if integer else pl.lit(False)
        exprs += [column.count().alias(f"c{i}"), zero_one.alias(f"b{i}")]
    return exprs


def _distinct_queries(frame: pl.LazyFrame, schema: pl.Schema, names: list[str]) -> dict[str, pl.LazyFrame]:
    """The distinct non-null count of each string and integer column, a query each: as a streaming
    ``unique`` it holds only the distinct values (``n_unique`` beside other aggregations held whole columns)."""
    return {f"u{i}": frame.select(pl.col(name)).drop_nulls().unique().select(pl.len())
            for i, name in enumerate(names) if _is_string(schema[name]) or schema[name].is_integer()}


def _read_stats(row: dict[str, Any], names: list[str]) -> dict[str, _Stats]:
    return {name: _Stats(int(row[f"c{i}"]), int(row.get(f"u{i}", 0)), bool(row[f"b{i}"]))
            for i, name in enumerate(names)}


def _string_choice(count: int, distinct: int) -> str:
    if distinct <= CATEGORICAL_MAX_DISTINCT:
        return "categorical"
    if distinct >= ID_UNIQUE_SHARE * count:
        return "id"
    return "high_cardinality"


def _infer_event_column(dtype: pl.DataType, count: int, distinct: int, zero_one: bool) -> EventColumn:
    if count == 0:
        return EventColumn(kind="ignore")
    top_k = None
    if dtype == pl.Boolean or zero_one:
        kind = "boolean"
    elif dtype.is_integer() and _string_choice(count, distinct) == "id":
        kind = "ignore"  # an integer unique per row is an id (summing it would be noise, and overflow)
    elif dtype.is_numeric():
        kind = "numeric"
    elif _is_timestamp(dtype):
        kind = "timestamp"
    elif _is_string(dtype):
        kind = {"categorical": "categorical", "high_cardinality": "high_cardinality", "id": "ignore"}[
            _string_choice(count, distinct)
        ]
        top_k = min(DEFAULT_TOP_K, max(distinct, 1)) if kind == "categorical" else None
    else:
        kind = "ignore"
    # explicit aggregations, so the manifest shows exactly what was computed
    return EventColumn(kind=kind, aggregations=list(DEFAULT_AGGREGATIONS[kind]) or None, top_k=top_k)


def _infer_use(dtype: pl.DataType, count: int, distinct: int, zero_one: bool) -> ColumnUse:
    if count == 0:
        return ColumnUse(use="ignore")
    if dtype == pl.Boolean or zero_one:
        return ColumnUse(use="boolean")
    if dtype.is_numeric():
        return ColumnUse(use="numeric")
    if _is_timestamp(dtype):
        return ColumnUse(use="days_since")
    if _is_string(dtype) and distinct <= CATEGORICAL_MAX_DISTINCT:
        return ColumnUse(use="one_hot", top_k=min(DEFAULT_TOP_K, max(distinct, 1)))
    return ColumnUse(use="ignore")


def infer_windows(first_event: datetime | None, snapshots: list[datetime]) -> list[int]:
    """7 and 30 days, plus each of 90/180/365 covered by the history before the earliest snapshot."""
    if first_event is None or not snapshots:
        return list(ALWAYS_WINDOWS)
    span = (min(snapshots) - first_event) / timedelta(days=1)
    return [w for w in CANDIDATE_WINDOWS if w in ALWAYS_WINDOWS or w <= span]


def infer_spec(
    events: pl.LazyFrame | None,
    entities: pl.LazyFrame | None,
    spine: pl.LazyFrame,
    table_columns: list[str] | None = None,
) -> FeatureSpec:
    """The spec inferred from the extract's schema and one streaming pass of cheap statistics (see module doc).

    ``spine``: entity_id, snapshot_ts (and label, and a ready-made feature table's columns, named in
    ``table_columns``); ``events`` None for a feature table without events.
    """
    never = {ENTITY, EVENT_TS, SNAPSHOT, LABEL}
    queries: dict[str, pl.LazyFrame] = {}
    plans: dict[str, tuple[pl.Schema, list[str]]] = {}
    sources = {"events": events, "entities": entities, "table": spine if table_columns else None}
    for name, frame in sources.items():
        if frame is None:
            continue
        schema = frame.collect_schema()
        chosen = [c for c in schema.names() if c not in never and (name != "table" or c in (table_columns or []))]
        exprs = _stats_exprs(schema, chosen)
        if name == "events":
            exprs.append(pl.col(EVENT_TS).min().alias("first_event"))
        if exprs:
            queries[name] = frame.select(exprs)
            plans[name] = (schema, chosen)
            queries.update({f"{name}.{key}": query for key, query in _distinct_queries(frame, schema, chosen).items()})
    queries["snapshots"] = spine.select(pl.col(SNAPSHOT).cast(pl.Datetime("us")).unique())
    frames = dict(zip(queries, pl.collect_all(list(queries.values()), engine="streaming"), strict=True))
    for key in [k for k in frames if "." in k]:  # the distinct counts, into their source's row of statistics
        name, stat = key.split(".")
        frames[name] = frames[name].with_columns(pl.lit(frames.pop(key).item()).alias(stat))

    snapshots = frames["snapshots"].to_series().drop_nulls().to_list()
    event_columns: dict[str, EventColumn] = {}
    windows: list[int] = []
    if "events" in frames:
        schema, chosen = plans["events"]
        row = frames["events"].row(0, named=True)
        stats = _read_stats(row, chosen)
        event_columns = {c: _infer_event_column(schema[c], *stats[c]) for c in chosen}
        windows = infer_windows(row["first_event"], snapshots)
    elif events is not None:
        windows = list(ALWAYS_WINDOWS)
    uses: dict[str, dict[str, ColumnUse]] = {"entities": {}, "table": {}}
    for name in uses:
        if name in frames:
            schema, chosen = plans[name]
            stats = _read_stats(frames[name].row(0, named=True), chosen)
            uses[name] = {c: _infer_use(schema[c], *stats[c]) for c in chosen}
    has_events = events is not None
    return FeatureSpec(
        windows_days=windows,
        recency=has_events,
        tenure=has_events,
        ratios=[(30, 90)] if {30, 90} <= set(windows) else [],
        events=event_columns,
        entity_attributes=uses["entities"],
        table_columns=uses["table"],
    )


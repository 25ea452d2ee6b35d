"""Gate 1, ``validate-raw``: the raw extract (events, labels, entities; or a ready-made feature table) is
complete and sane for the build that follows.

The rules follow the build's choices: the split method decides how many snapshot dates are needed, the task
what a label may be, exactly (binary 0/1, booleans or text spelling '0'/'1'; multiclass 2..``max_classes``
classes of text, booleans or whole numbers; regression finite numbers), and the feature spec, when one is
given, which columns must be numbers. ``amount`` is declared numeric (``max_amount``): text there is refused.
Every failure names the user's columns (the extract manifest's ``columns``).
"""

from __future__ import annotations

import time
from datetime import datetime

import polars as pl
from mlcontract import storage
from mlcontract.manifests import ExtractManifest, GateManifest
from mlcontract.names import (
    AUTO_SPLIT,
    BINARY,
    ENTITY,
    EVENT_TS,
    FEATURE_TABLE_SOURCE,
    LABEL,
    MIN_TIME_SPLIT_SNAPSHOTS,
    MULTICLASS,
    PART_PREFIX,
    REGRESSION,
    SNAPSHOT,
    TIME_SPLIT,
)

from features.engineering.spec import FeatureSpec
from features.validation import rules as r
from features.validation.gx import prefetch_gx
from features.validation.measure import Dataset
from features.validation.run import run_gate

ROLES = {ENTITY: "entity key", EVENT_TS: "timestamp", SNAPSHOT: "snapshot", LABEL: "label"}
MAX_CLASSES = 200  # more distinct labels than this is a regression target or an id, not classes


def validate_raw(
    extract_dir: str,
    out_dir: str,
    *,
    min_events: int = 1,
    max_amount: float = 1.0e6,
    min_snapshots: int | None = None,
    min_label_rate: float = 0.005,
    max_label_rate: float = 0.95,
    task: str = BINARY,
    split: str = AUTO_SPLIT,
    max_classes: int = MAX_CLASSES,
    spec: FeatureSpec | None = None,
) -> GateManifest:
    """Gate 1 on an ``extract`` step's output; ``max_amount`` is the declared range of an ``amount`` column.

    ``min_snapshots`` defaults to what ``split`` needs: a time split >= 3 snapshot dates, entity or auto >= 1.
    ``spec``: the build's feature spec; the columns it treats as numbers must be numbers.
    """
    started = time.perf_counter()
    prefetch_gx()
    extract = ExtractManifest.read(extract_dir)
    cutoff = datetime.fromisoformat(extract.cutoff) if extract.cutoff else None
    names = extract.columns

    def named(column: str) -> str:
        """A canonical column as the user knows it, e.g. ``cutoff_ts (snapshot)``."""
        if column == SNAPSHOT and extract.kind == FEATURE_TABLE_SOURCE and SNAPSHOT not in names:
            return f"{SNAPSHOT} (snapshot: the feature table has no --snapshot-column, so one date for all rows)"
        return f"{names.get(column, column)} ({ROLES[column]})"

    datasets = []
    if extract.kind != FEATURE_TABLE_SOURCE:
        datasets.append(events_dataset(extract, named, min_events, max_amount, cutoff, spec))

    labels = storage.scan_parquet(extract.output("labels"))
    schema = labels.collect_schema()
    rules = [r.columns_present([ENTITY, SNAPSHOT, LABEL], schema), r.row_count(1)]
    rules += [r.not_null(c, schema[c]) for c in (ENTITY, SNAPSHOT, LABEL) if c in schema]
    if LABEL in schema:
        rules += label_rules(schema[LABEL], named(LABEL), task, (min_label_rate, max_label_rate), max_classes)
    if ENTITY in schema and SNAPSHOT in schema:
        rules.append(r.unique([ENTITY, SNAPSHOT]).explained(
            f"one row per {named(ENTITY)} and {named(SNAPSHOT)}; these are on more than one"
        ))
    if SNAPSHOT in schema:
        rules.append(snapshot_count(named(SNAPSHOT), split, min_snapshots))
        if cutoff is not None and isinstance(schema[SNAPSHOT], pl.Datetime):
            rules.append(r.between(SNAPSHOT, high=cutoff, dtype=schema[SNAPSHOT]))
    if extract.kind == FEATURE_TABLE_SOURCE:
        given = [names[c] for c in (ENTITY, SNAPSHOT, LABEL) if c in names]
        rules.append(r.column_count_between(schema, 4).explained(
            f"the feature table has no feature column besides {', '.join(given)}"
        ))
    datasets.append(Dataset("labels", labels, schema, rules, names))

    if "entities" in extract.outputs:
        entities = storage.scan_parquet(extract.output("entities"))
        schema = entities.collect_schema()
        rules = [r.columns_present([ENTITY], schema)]
        if ENTITY in schema:
            rules += [r.not_null(ENTITY, schema[ENTITY]), r.unique([ENTITY])]
        if spec is not None:
            numeric = {c for c, use in spec.entity_attributes.items() if use.use in ("numeric", "boolean")}
            rules += numeric_columns(schema, numeric, "entity_attributes")
        datasets.append(Dataset("entities", entities, schema, rules, names))
    return run_gate("validate-raw", out_dir, datasets, started, input=extract_dir)


def events_dataset(extract: ExtractManifest, named, min_events: int, max_amount: float,
                   cutoff: datetime | None, spec: FeatureSpec | None = None) -> Dataset:
    parts = storage.list_files(extract.output("events"), PART_PREFIX)
    events = storage.scan_parquet(parts) if parts else pl.LazyFrame({ENTITY: [], EVENT_TS: []})
    schema = events.collect_schema()
    rules = [r.columns_present([ENTITY, EVENT_TS], schema), r.row_count(min_events)]
    rules += [r.not_null(c, schema[c]) for c in (ENTITY, EVENT_TS) if c in schema]
    if EVENT_TS in schema:
        rules.append(r.of_type(EVENT_TS, schema[EVENT_TS], pl.Datetime("us"), "datetime64[us]"))
        if cutoff is not None and isinstance(schema[EVENT_TS], pl.Datetime):
            rules.append(r.between(EVENT_TS, high=cutoff, strict_max=True, dtype=schema[EVENT_TS]))
        if extract.snapshots and isinstance(schema[EVENT_TS], pl.Datetime):
            latest = datetime.fromisoformat(extract.snapshots[-1])
            rules.append(r.min_before(EVENT_TS, schema[EVENT_TS], latest).explained(
                f"no event of column {named(EVENT_TS)} is before any snapshot (the latest is "
                f"{latest.date()} in column {named(SNAPSHOT)}): every feature would be empty"
            ))
    if "amount" in schema:
        if schema["amount"].is_numeric():
            rules.append(r.between("amount", 0, max_amount, dtype=schema["amount"]))
        elif spec is None or "amount" not in spec.events or spec.events["amount"].kind in NUMERIC_KINDS:
            # a money column read as text (a TEXT column, or SQLite values such as 'n/a'): the build would
            # treat it as a category, or fail on it
            rules.append(r.numeric_type("amount", schema["amount"]).explained(
                f"column amount must hold numbers (its declared range is 0..{max_amount:g}), not {schema['amount']}: "
                "fix its type in the warehouse, or cast it in --events-query"
            ))
    if spec is not None:
        numeric = {c for c, column in spec.events.items() if column.kind in NUMERIC_KINDS} - {"amount"}
        rules += numeric_columns(schema, numeric, "events")
    return Dataset("events", events, schema, rules, extract.columns)


NUMERIC_KINDS = ("numeric", "boolean")


def numeric_columns(schema: pl.Schema, columns: set[str], section: str) -> list[r.Rule]:
    """The columns the feature spec treats as numbers (or 0/1 flags) are numbers or booleans."""
    rules = []
    for column in sorted(c for c in columns if c in schema):  # a missing one is the build's spec check
        dtype = schema[column]
        if dtype.is_numeric() or dtype == pl.Boolean:
            continue
        rules.append(r.numeric_type(column, dtype).explained(
            f"column {column} must hold numbers: the feature spec's {section} treat it as numeric, but it is {dtype}"
        ))
    return rules


def snapshot_count(column: str, split: str, min_snapshots: int | None) -> r.Rule:
    """Enough snapshot dates for the split: a time split needs one for train, valid and test each."""
    needed = MIN_TIME_SPLIT_SNAPSHOTS if split == TIME_SPLIT else 1
    if min_snapshots is not None:
        why = f"column {column} has {{observed}} distinct value(s); this gate needs >= {min_snapshots}"
    elif split == TIME_SPLIT:
        why = (f"column {column} has {{observed}} distinct value(s); a time split needs >= {needed} "
               f"(use split=entity or auto)")
    else:
        why = f"column {column} has no value"
    return r.distinct_count_between(SNAPSHOT, needed if min_snapshots is None else min_snapshots).explained(why)


def label_rules(dtype: pl.DataType, column: str, task: str, rate: tuple[float, float], max_classes: int) -> list[r.Rule]:
    """What a label may be for ``task``; a value that does not fit is shown as an example, never as a null."""
    if task == BINARY:
        rules = [r.binary_values(LABEL, dtype).explained(f"column {column} must hold 0/1 or booleans for task=binary")]
        if dtype.is_numeric() or dtype == pl.Boolean:
            rules.append(r.mean_between(LABEL, *rate).explained(
                f"the share of 1s in column {column} is {{observed}}; expected {rate[0]}..{rate[1]} for task=binary"
            ))
        return rules
    if task == MULTICLASS:
        return [
            r.class_values(LABEL, dtype).explained(
                f"column {column} must hold class labels (text, booleans or whole numbers) for task=multiclass, "
                f"not measurements ({dtype}); use task=regression for a measured target"
            ),
            r.distinct_count_between(LABEL, 2, max_classes).explained(
                f"column {column} has {{observed}} distinct value(s); task=multiclass needs 2..{max_classes} classes"
            ),
        ]
    assert task == REGRESSION, task
    rules = [r.numeric_type(LABEL, dtype).explained(
        f"column {column} must hold numbers for task=regression, not {dtype}"
    )]
    if dtype.is_numeric():
        rules += [
            r.finite_between(LABEL, dtype, None, None).explained(f"column {column} must be finite for task=regression"),
            r.stdev_between(LABEL, 0, strict_min=True).explained(
                f"column {column} is constant (standard deviation {{observed}}): nothing to learn for task=regression"
            ),
        ]
    return rules

"""Gate 1, ``validate-raw``: the raw extract (events, labels, entities) is complete and sane."""

from __future__ import annotations

import time
from datetime import datetime

import polars as pl
from mlcontract import storage
from mlcontract.manifests import ExtractManifest, GateManifest
from mlcontract.names import ENTITY, EVENT_TS, LABEL, PART_PREFIX, SNAPSHOT

from features.validation import rules as r
from features.validation.gx import prefetch_gx
from features.validation.measure import Dataset
from features.validation.run import run_gate


def validate_raw(
    extract_dir: str,
    out_dir: str,
    *,
    min_events: int = 1,
    max_amount: float = 1.0e6,
    min_snapshots: int = 2,
    min_label_rate: float = 0.005,
    max_label_rate: float = 0.95,
) -> GateManifest:
    """Gate 1 on an ``extract`` step's output; ``max_amount`` is the declared range of an ``amount`` column."""
    started = time.perf_counter()
    prefetch_gx()
    extract = ExtractManifest.read(extract_dir)
    cutoff = datetime.fromisoformat(extract.cutoff) if extract.cutoff else None

    parts = storage.list_files(extract.output("events"), PART_PREFIX)
    events = storage.scan_parquet(parts) if parts else pl.LazyFrame({ENTITY: [], EVENT_TS: []})
    schema = events.collect_schema()
    rules = [r.columns_present([ENTITY, EVENT_TS], schema), r.row_count(min_events)]
    rules += [r.not_null(c, schema[c]) for c in (ENTITY, EVENT_TS) if c in schema]
    if EVENT_TS in schema:
        rules.append(r.of_type(EVENT_TS, schema[EVENT_TS], pl.Datetime("us"), "datetime64[us]"))
        if cutoff is not None and isinstance(schema[EVENT_TS], pl.Datetime):
            rules.append(r.between(EVENT_TS, high=cutoff, strict_max=True, dtype=schema[EVENT_TS]))
    if "amount" in schema and schema["amount"].is_numeric():
        rules.append(r.between("amount", 0, max_amount, dtype=schema["amount"]))
    datasets = [Dataset("events", events, schema, rules)]

    labels = storage.scan_parquet(extract.output("labels"))
    schema = labels.collect_schema()
    rules = [r.columns_present([ENTITY, SNAPSHOT, LABEL], schema), r.row_count(1)]
    rules += [r.not_null(c, schema[c]) for c in (ENTITY, SNAPSHOT, LABEL) if c in schema]
    if LABEL in schema:
        rules.append(r.in_set(LABEL, [0, 1], schema[LABEL]))
        if schema[LABEL].is_numeric() or schema[LABEL] == pl.Boolean:
            rules.append(r.mean_between(LABEL, min_label_rate, max_label_rate))
    if ENTITY in schema and SNAPSHOT in schema:
        rules.append(r.unique([ENTITY, SNAPSHOT]))
    if SNAPSHOT in schema:
        rules.append(r.distinct_count_between(SNAPSHOT, min_snapshots))
        if cutoff is not None and isinstance(schema[SNAPSHOT], pl.Datetime):
            rules.append(r.between(SNAPSHOT, high=cutoff, dtype=schema[SNAPSHOT]))
    datasets.append(Dataset("labels", labels, schema, rules))

    if "entities" in extract.outputs:
        entities = storage.scan_parquet(extract.output("entities"))
        schema = entities.collect_schema()
        rules = [r.columns_present([ENTITY], schema)]
        if ENTITY in schema:
            rules += [r.not_null(ENTITY, schema[ENTITY]), r.unique([ENTITY])]
        datasets.append(Dataset("entities", entities, schema, rules))
    return run_gate("validate-raw", out_dir, datasets, started, input=extract_dir)

"""Data gates with Great Expectations 1.x: gate 1 on the raw extract, gate 2 on the feature snapshot.

Each expectation of a gate is a :class:`Rule` over every row of one dataset. Polars measures all the
rules of a dataset in ONE lazy pass over its parquet files (only the needed columns): for a row rule the
exact number of offending rows (nulls, values out of range or out of a set, non-finite values,
duplicate keys, wrong types), for an aggregate rule one exact value (row count, mean, distinct count).
GX then decides every rule on that small metrics table, one row per rule, the same way its SQL engine
decides on counts computed by a database: offending rows within the rule's allowance (``mostly``),
aggregate values within their bounds. GX's pandas engine never sees the data itself, so the gate's cost
is one columnar scan, not a pandas conversion plus per-row Python.

Each gate writes the GX results (``validation.json``; the metrics table is in each result's ``meta``)
and a manifest with ``success`` and ``failures``, and raises :class:`GateFailed` naming every failing
expectation, column, exact count and a few offending rows (fetched with a polars filter, only on failure).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from features import io

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# Feature names that promise a range (the build step's naming convention); checked on every row.
NON_NEGATIVE_MARKERS = ("count", "n_", "num_", "events", "days", "tenure", "amount", "spend", "sum")
UNIT_INTERVAL_MARKERS = ("share", "ratio", "fraction", "pct")
FINITE = 1.0e300  # |x| above this is treated as infinite
EXAMPLES = 5  # offending rows shown per failing rule


class GateFailed(Exception):
    """A gate found bad data; the message names each failing expectation and column."""

    def __init__(self, gate: str, failures: list[dict[str, Any]]):
        self.gate = gate
        self.failures = failures
        lines = [
            f"  - {f['dataset']}: {f['expectation']} on {f['column'] or 'table'}: {f['details']}"
            for f in failures
        ]
        super().__init__(f"{gate} gate failed ({len(failures)} expectation(s)):\n" + "\n".join(lines))


@dataclass
class Check:
    """One dataset to validate: a pandas frame and the expectations GX evaluates on it.

    The data gates hand GX a metrics table (``rows`` then says how many data rows it stands for, and
    ``explain`` turns a failed GX result into one failure per broken rule); :mod:`features.output_gate`
    hands it the data itself.
    """

    name: str
    frame: Any  # pandas.DataFrame
    expectations: list[Any]
    rows: int | None = None
    explain: Callable[[Any], list[dict[str, Any]]] | None = None
    result_format: Any = "SUMMARY"
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One expectation over a whole dataset, measured by polars and decided by GX.

    A row rule marks the rows that break it (``bad``); the gate passes when at most ``1 - mostly`` of the
    rows are bad. An aggregate rule measures one value (``observed``) that must lie in ``bounds``.
    ``expectation`` and ``kwargs`` are the GX expectation the rule stands for, as GX names them.
    """

    expectation: str
    column: str | list[str] | None  # None: the table
    kwargs: dict[str, Any] = field(default_factory=dict)
    bad: pl.Expr | None = None
    mostly: float = 1.0
    observed: pl.Expr | None = None
    bounds: tuple[float | None, float | None] = (None, None)
    missing: list[str] | None = None  # the column-set rule: required columns that are absent
    # a cheap aggregate that, when true, proves no row is bad (``bad`` is then only counted when it is not)
    clean_if: pl.Expr | None = None

    @property
    def label(self) -> str:
        return str(self.column) if self.column is not None else "table"

    @property
    def expected(self) -> str:
        """The expectation's arguments, as shown in failures (the column lists are in ``column``)."""
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in ("column_set", "column_list"))

    def shown_columns(self) -> list[str]:
        return list(self.column) if isinstance(self.column, list) else [self.column] if self.column else []


def not_null(column: str, dtype: pl.DataType, mostly: float = 1.0) -> Rule:
    # NaN is a missing value too (as in pandas): "no nulls" also means "no NaN"
    bad = pl.col(column).is_null()
    if dtype.is_float():
        bad = bad | pl.col(column).is_nan()
    kwargs = {"mostly": mostly} if mostly < 1.0 else {}
    return Rule("expect_column_values_to_not_be_null", column, kwargs, bad=bad, mostly=mostly)


def between(
    column: str,
    low: Any = None,
    high: Any = None,
    *,
    strict_max: bool = False,
    dtype: pl.DataType | None = None,
) -> Rule:
    # like GX, missing values (null, NaN) are left to the not-null rules
    value = pl.col(column)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        value = value.dt.replace_time_zone(None)  # bounds are naive UTC, like the canonical layout
    inside = pl.lit(True)
    if low is not None:
        inside = inside & (value >= low)
    if high is not None:
        inside = inside & ((value < high) if strict_max else (value <= high))
    present = value.is_not_null() & (value.is_not_nan() if dtype is not None and dtype.is_float() else True)
    kwargs = {k: v for k, v in (("min_value", low), ("max_value", high)) if v is not None}
    if strict_max:
        kwargs["strict_max"] = True
    return Rule("expect_column_values_to_be_between", column, kwargs, bad=present & ~inside)


def in_set(column: str, values: list[Any], dtype: pl.DataType) -> Rule:
    if dtype.is_numeric() or dtype == pl.Boolean:
        outside = ~pl.col(column).cast(pl.Float64).is_in([float(v) for v in values])
    else:
        outside = pl.lit(True)  # a non-numeric label column holds no value of the set
    bad = pl.col(column).is_not_null() & outside
    return Rule("expect_column_values_to_be_in_set", column, {"value_set": values}, bad=bad)


def of_type(column: str, dtype: pl.DataType, expected: pl.DataType, gx_name: str) -> Rule:
    # the column's type decides (as in GX on a typed column): every row of a wrongly typed column is bad
    bad = pl.lit(dtype != expected)
    return Rule("expect_column_values_to_be_of_type", column, {"type_": gx_name}, bad=bad)


def unique(columns: list[str]) -> Rule:
    key = pl.col(columns[0]) if len(columns) == 1 else pl.struct(columns)
    # as many distinct 64-bit hashes as rows proves every key distinct (a collision only costs the exact
    # count below), at a fraction of the cost of counting the duplicated keys
    clean_if = key.hash().n_unique() == pl.len()
    if len(columns) == 1:
        bad = key.is_not_null() & key.is_duplicated()
        return Rule("expect_column_values_to_be_unique", columns[0], bad=bad, clean_if=clean_if)
    # GX's default: rows whose key is entirely missing are ignored
    bad = key.is_duplicated() & ~pl.all_horizontal(pl.col(c).is_null() for c in columns)
    return Rule(
        "expect_compound_columns_to_be_unique", columns, {"column_list": columns}, bad=bad, clean_if=clean_if
    )


def row_count(low: int | None = None, high: int | None = None, *, equal: int | None = None) -> Rule:
    if equal is not None:
        return Rule(
            "expect_table_row_count_to_equal",
            None,
            {"value": equal},
            observed=pl.len(),
            bounds=(equal, equal),
        )
    kwargs = {k: v for k, v in (("min_value", low), ("max_value", high)) if v is not None}
    return Rule("expect_table_row_count_to_be_between", None, kwargs, observed=pl.len(), bounds=(low, high))


def mean_between(column: str, low: float, high: float) -> Rule:
    observed = pl.col(column).cast(pl.Float64).mean()
    kwargs = {"min_value": low, "max_value": high}
    return Rule("expect_column_mean_to_be_between", column, kwargs, observed=observed, bounds=(low, high))


def distinct_count_between(column: str, low: int | None = None, high: int | None = None) -> Rule:
    observed = pl.col(column).drop_nulls().n_unique()
    kwargs = {k: v for k, v in (("min_value", low), ("max_value", high)) if v is not None}
    return Rule(
        "expect_column_unique_value_count_to_be_between",
        column,
        kwargs,
        observed=observed,
        bounds=(low, high),
    )


def columns_present(required: list[str], schema: pl.Schema) -> Rule:
    missing = [c for c in required if c not in schema]
    return Rule(
        "expect_table_columns_to_match_set",
        required,
        {"column_set": required, "exact_match": False},
        observed=pl.lit(len(missing)),
        bounds=(0, 0),
        missing=missing,
    )


# ---------------------------------------------------------------------------------------------- measure


@dataclass
class Dataset:
    """One dataset of a gate: a lazy scan of its parquet files and the rules that must hold on it."""

    name: str
    scan: pl.LazyFrame
    schema: pl.Schema
    rules: list[Rule]


def _scan(uris: str | list[str]) -> pl.LazyFrame:
    """A lazy scan of parquet files: a local path for ``file://``, the URI itself for object stores."""
    paths = []
    for uri in [uris] if isinstance(uris, str) else uris:
        fs, path = io.filesystem(uri)
        paths.append(path if io.is_local(fs) else uri)
    return pl.scan_parquet(paths)


METRICS_COLUMNS = (
    "expectation",
    "column",
    "expected",
    "element_count",
    "unexpected_count",
    "allowed_unexpected",
    "observed",
    "min_value",
    "max_value",
)


def measure(datasets: list[Dataset]) -> list[list[dict[str, Any]]]:
    """The exact metrics of every rule: one lazy polars pass over all the rows of each dataset.

    The passes run together (``collect_all``), so small datasets do not wait for large ones.
    """
    values = [v.row(0, named=True) for v in pl.collect_all([d.scan.select(_plan(d)) for d in datasets])]
    recount = {}
    for k, (dataset, found) in enumerate(zip(datasets, values, strict=True)):
        for i, rule in enumerate(dataset.rules):
            if rule.clean_if is not None:
                if found[f"__{i}"]:
                    found[f"__{i}"] = 0
                else:  # the cheap proof did not hold: count exactly
                    recount.setdefault(k, []).append(rule.bad.sum().alias(f"__{i}"))
    if recount:
        plans = [datasets[k].scan.select(exprs) for k, exprs in recount.items()]
        for k, counted in zip(recount, pl.collect_all(plans), strict=True):
            values[k].update(counted.row(0, named=True))
    return [_metrics(d, v) for d, v in zip(datasets, values, strict=True)]


def _plan(dataset: Dataset) -> list[pl.Expr]:
    exprs: list[pl.Expr] = [pl.len().alias("__rows")]
    for i, rule in enumerate(dataset.rules):
        if rule.clean_if is not None:
            exprs.append(rule.clean_if.alias(f"__{i}"))
        elif rule.bad is not None:
            exprs.append(rule.bad.sum().alias(f"__{i}"))
        else:
            exprs.append(rule.observed.cast(pl.Float64).alias(f"__{i}"))
    return exprs


def _metrics(dataset: Dataset, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics table of ``dataset``: one row per rule."""
    rows = int(values["__rows"])
    metrics = []
    for i, rule in enumerate(dataset.rules):
        value = values[f"__{i}"]
        metric: dict[str, Any] = dict.fromkeys(METRICS_COLUMNS, math.nan)
        metric.update(
            expectation=rule.expectation, column=rule.label, expected=rule.expected, element_count=rows
        )
        if rule.bad is not None:
            metric["unexpected_count"] = int(value or 0)
            # GX's `mostly`: success when the share of good rows is at least `mostly`
            metric["allowed_unexpected"] = math.floor(rows * (1.0 - rule.mostly) + 1e-9)
        else:
            low, high = rule.bounds
            metric["observed"] = math.nan if value is None else float(value)
            metric["min_value"] = -math.inf if low is None else float(low)
            metric["max_value"] = math.inf if high is None else float(high)
        metrics.append(metric)
    return metrics


# ---------------------------------------------------------------------------------------------- decide


def _decide(dataset: Dataset, metrics: list[dict[str, Any]]) -> Check:
    """A GX check over the metrics table of ``dataset``: three expectations decide every rule."""
    import great_expectations.expectations as gxe
    import pandas as pd

    frame = pd.DataFrame(metrics, columns=list(METRICS_COLUMNS))
    rows = int(metrics[0]["element_count"]) if metrics else 0
    expectations = [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="allowed_unexpected",
            column_B="unexpected_count",
            or_equal=True,
            description=f"Row rules on {dataset.name}: the rows that break each rule are within its allowance.",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="observed",
            column_B="min_value",
            or_equal=True,
            description=f"Aggregate rules on {dataset.name}: the observed value is at least the minimum.",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="max_value",
            column_B="observed",
            or_equal=True,
            description=f"Aggregate rules on {dataset.name}: the observed value is at most the maximum.",
        ),
    ]
    by_key = {(r.expectation, r.label): (r, m) for r, m in zip(dataset.rules, metrics, strict=True)}
    reported: set[tuple[str, str]] = set()  # an unmeasurable aggregate (NaN) breaks both of its bounds

    def explain(result: Any) -> list[dict[str, Any]]:
        broken = (result.result or {}).get("unexpected_index_list") or []
        if not broken:  # GX itself failed to evaluate: report its own failure
            return [_failure(dataset.name, result)]
        keys = [
            k for k in dict.fromkeys((b["expectation"], b["column"]) for b in broken) if k not in reported
        ]
        reported.update(keys)
        return [_rule_failure(dataset, *by_key[key]) for key in keys]

    return Check(
        dataset.name,
        frame,
        expectations,
        rows=rows,
        explain=explain,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": ["expectation", "column", "expected"],
        },
        meta={"metrics": [{k: _plain(v) for k, v in m.items()} for m in metrics]},
    )


def _plain(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None  # unmeasured or unbounded; strict JSON has no NaN or Infinity
    if isinstance(value, float) and value.is_integer() and not math.isinf(value):
        return int(value)
    return value


def _rule_failure(dataset: Dataset, rule: Rule, metric: dict[str, Any]) -> dict[str, Any]:
    expected = rule.expected
    if rule.missing is not None:
        observed: Any = {"missing": rule.missing}
        details = f"missing {rule.missing}"
    elif rule.bad is not None:
        count = int(metric["unexpected_count"])
        rows, examples = _examples(dataset, rule)
        observed = {
            "unexpected_count": count,
            "unexpected_percent": 100.0 * count / metric["element_count"] if metric["element_count"] else 0.0,
            "examples": examples,
            "rows": rows,
        }
        details = f"{count:,} unexpected value(s)"
        if rule.expectation == "expect_column_values_to_not_be_null":
            details += f", e.g. rows {rows}"
        else:
            details += f", e.g. {examples} (rows {rows})"
    else:
        observed = _plain(metric["observed"])
        details = f"observed {observed!r}"
    if expected:
        details += f" (expected {expected})"
    return {
        "dataset": dataset.name,
        "expectation": rule.expectation,
        "column": rule.column,
        "observed": observed,
        "details": details,
    }


def _examples(dataset: Dataset, rule: Rule) -> tuple[list[int], list[Any]]:
    """A few offending rows of a failed row rule: their positions and values (one more filtered scan)."""
    shown = [c for c in rule.shown_columns() if c in dataset.schema]
    found = (
        dataset.scan.with_row_index("__row").filter(rule.bad).select("__row", *shown).head(EXAMPLES).collect()
    )
    values = found.select(shown).rows() if shown else []
    examples = [v[0] if len(v) == 1 else list(v) for v in values]
    return found["__row"].to_list(), [_example(e) for e in examples]


def _example(value: Any) -> Any:
    if isinstance(value, list):
        return [_example(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)


# ---------------------------------------------------------------------------------------------- GX


def prefetch_gx() -> None:
    """Start importing GX (seconds of pure Python) in the background while polars scans the data."""
    if "great_expectations.expectations" in sys.modules:
        return
    threading.Thread(
        target=importlib.import_module, args=("great_expectations.expectations",), daemon=True
    ).start()


@contextlib.contextmanager
def _no_batch_fingerprint() -> Iterator[None]:
    # GX fingerprints every in-memory pandas batch by hashing all of its cells (~2 s per 10 M rows). The
    # fingerprint is only a batch marker that nothing here reads, so skip it.
    from great_expectations.execution_engine import pandas_execution_engine as engine

    saved = engine.HASH_THRESHOLD
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = saved


def _run(checks: list[Check]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # GX resets it on import
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("gate")
    results: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    with _no_batch_fingerprint():
        for check in checks:
            batch = source.add_dataframe_asset(check.name).add_batch_definition_whole_dataframe(check.name)
            suite = context.suites.add(gx.ExpectationSuite(name=check.name, expectations=check.expectations))
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=check.name, data=batch, suite=suite)
            )
            outcome = definition.run(
                batch_parameters={"dataframe": check.frame}, result_format=check.result_format
            )
            outcome.meta.update(check.meta)
            results[check.name] = outcome.to_json_dict()
            for result in outcome.results:
                if not result.success:
                    failures.extend(
                        check.explain(result) if check.explain else [_failure(check.name, result)]
                    )
    return results, failures


def _failure(dataset: str, result: Any) -> dict[str, Any]:
    """A failure straight from a GX result on the data itself (or a GX error on a metrics table)."""
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_set")
    body = result.result or {}
    if result.exception_info and result.exception_info.get("raised_exception"):
        observed: Any = {"exception": result.exception_info.get("exception_message")}
        details = f"raised {result.exception_info.get('exception_message')}"
    elif "observed_value" in body:
        observed = body["observed_value"]
        details = f"observed {observed!r}"
    else:
        observed = {
            "unexpected_count": body.get("unexpected_count"),
            "unexpected_percent": body.get("unexpected_percent"),
            "examples": [str(v) for v in (body.get("partial_unexpected_list") or [])[:EXAMPLES]],
        }
        details = f"{observed['unexpected_count']} unexpected value(s)"
        if "null" not in config.type:
            details += f", e.g. {observed['examples']}"
    bounds = {
        k: kwargs[k] for k in ("min_value", "max_value", "value_set", "value") if kwargs.get(k) is not None
    }
    if bounds:
        details += f" (expected {', '.join(f'{k}={v}' for k, v in bounds.items())})"
    return {
        "dataset": dataset,
        "expectation": config.type,
        "column": column if not isinstance(column, (list, tuple, set)) else list(column),
        "observed": observed,
        "details": details,
    }


def _read(uris: str | list[str], columns: list[str] | None) -> pl.DataFrame:
    if isinstance(uris, str):
        uris = [uris]
    frames = []
    for uri in uris:
        fs, path = io.filesystem(uri)
        with fs.open(path, "rb") as handle:
            frames.append(pl.read_parquet(handle, columns=columns))
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()


def _event_parts(events_dir: str) -> list[str]:
    fs, path = io.filesystem(events_dir)
    names = sorted(p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))
    protocol = events_dir.split("://", 1)[0] + "://" if "://" in events_dir else ""
    return [protocol + p if protocol and not p.startswith(protocol) else p for p in names]


def _finish(
    gate: str, out_dir: str, checks: list[Check], extra: dict[str, Any], started: float
) -> dict[str, Any]:
    validate_started = time.perf_counter()
    results, failures = _run(checks)
    results_uri = io.join_uri(out_dir, "validation.json")
    io.atomic_write_json(results_uri, results)
    manifest = {
        "step": gate,
        "outputs": {"results": results_uri},
        "results_uri": results_uri,
        "success": not failures,
        "failures": failures,
        "rows": {c.name: c.rows if c.rows is not None else len(c.frame) for c in checks},
        "expectations": sum(len(c.meta.get("metrics", c.expectations)) for c in checks),
        "seconds": round(time.perf_counter() - started, 3),
        "validate_seconds": round(time.perf_counter() - validate_started, 3),
        **extra,
    }
    io.write_manifest(out_dir, manifest)
    log.info(
        "%s: %d expectations on %s rows, %d failed, %.2fs",
        gate,
        manifest["expectations"],
        f"{sum(manifest['rows'].values()):,}",
        len(failures),
        manifest["seconds"],
    )
    if failures:
        raise GateFailed(gate, failures)
    return manifest


def _gate(
    gate: str, out_dir: str, datasets: list[Dataset], extra: dict[str, Any], started: float
) -> dict[str, Any]:
    measured = measure(datasets)
    measure_seconds = round(time.perf_counter() - started, 3)
    checks = [_decide(d, m) for d, m in zip(datasets, measured, strict=True)]
    return _finish(gate, out_dir, checks, {**extra, "measure_seconds": measure_seconds}, started)


# ---------------------------------------------------------------------------------------------- gates


def validate_raw(
    extract_dir: str,
    out_dir: str,
    *,
    min_events: int = 1,
    max_amount: float = 1.0e6,
    min_snapshots: int = 2,
    min_label_rate: float = 0.005,
    max_label_rate: float = 0.95,
) -> dict[str, Any]:
    """Gate 1: the raw extract (events, labels, entities) is complete and sane."""
    started = time.perf_counter()
    prefetch_gx()
    extract = io.read_manifest(extract_dir)
    outputs = extract["outputs"]
    cutoff = datetime.fromisoformat(extract["cutoff"]) if extract.get("cutoff") else None

    parts = _event_parts(outputs["events"])
    events = _scan(parts) if parts else pl.LazyFrame({"entity_id": [], "event_ts": []})
    schema = events.collect_schema()
    rules = [columns_present(["entity_id", "event_ts"], schema), row_count(min_events)]
    rules += [not_null(c, schema[c]) for c in ("entity_id", "event_ts") if c in schema]
    if "event_ts" in schema:
        rules.append(of_type("event_ts", schema["event_ts"], pl.Datetime("us"), "datetime64[us]"))
        if cutoff is not None and isinstance(schema["event_ts"], pl.Datetime):
            rules.append(between("event_ts", high=cutoff, strict_max=True, dtype=schema["event_ts"]))
    if "amount" in schema and schema["amount"].is_numeric():
        rules.append(between("amount", 0, max_amount, dtype=schema["amount"]))
    datasets = [Dataset("events", events, schema, rules)]

    labels = _scan(outputs["labels"])
    schema = labels.collect_schema()
    rules = [columns_present(["entity_id", "snapshot_ts", "label"], schema), row_count(1)]
    rules += [not_null(c, schema[c]) for c in ("entity_id", "snapshot_ts", "label") if c in schema]
    if "label" in schema:
        rules.append(in_set("label", [0, 1], schema["label"]))
        if schema["label"].is_numeric() or schema["label"] == pl.Boolean:
            rules.append(mean_between("label", min_label_rate, max_label_rate))
    if "entity_id" in schema and "snapshot_ts" in schema:
        rules.append(unique(["entity_id", "snapshot_ts"]))
    if "snapshot_ts" in schema:
        rules.append(distinct_count_between("snapshot_ts", min_snapshots))
        if cutoff is not None and isinstance(schema["snapshot_ts"], pl.Datetime):
            rules.append(between("snapshot_ts", high=cutoff, dtype=schema["snapshot_ts"]))
    datasets.append(Dataset("labels", labels, schema, rules))

    if "entities" in outputs:
        entities = _scan(outputs["entities"])
        schema = entities.collect_schema()
        rules = [columns_present(["entity_id"], schema)]
        if "entity_id" in schema:
            rules += [not_null("entity_id", schema["entity_id"]), unique(["entity_id"])]
        datasets.append(Dataset("entities", entities, schema, rules))
    return _gate("validate-raw", out_dir, datasets, {"input": extract_dir}, started)


def _bounds(column: str) -> tuple[float | None, float | None]:
    name = column.lower()
    if any(marker in name for marker in UNIT_INTERVAL_MARKERS):
        return 0.0, 1.0
    if any(
        name.startswith(marker) or f"_{marker}" in name or marker in name for marker in NON_NEGATIVE_MARKERS
    ):
        if "trend" in name or "delta" in name or "diff" in name or "change" in name:
            return None, None
        return 0.0, None
    return None, None


def validate_features(features_dir: str, out_dir: str, *, max_null_fraction: float = 0.0) -> dict[str, Any]:
    """Gate 2: every split of the feature snapshot is non-empty, complete, finite and labelled 0/1."""
    started = time.perf_counter()
    prefetch_gx()
    build = io.read_manifest(features_dir)
    snapshot_uri = build["snapshot_uri"]
    snapshot = (
        io.read_manifest(snapshot_uri) if io.exists(io.join_uri(snapshot_uri, io.MANIFEST_NAME)) else build
    )
    feature_columns = list(snapshot.get("feature_columns") or build.get("feature_columns") or [])
    expected_rows = snapshot.get("rows") or build.get("rows") or {}
    datasets = []
    for split in SPLITS:
        frame = _scan(io.join_uri(snapshot_uri, f"{split}.parquet"))
        schema = frame.collect_schema()
        rules = [
            columns_present(["entity_id", "snapshot_ts", "label", *feature_columns], schema),
            row_count(1),
        ]
        rules += [not_null(c, schema[c]) for c in ("entity_id", "label") if c in schema]
        if "label" in schema:
            rules.append(in_set("label", [0, 1], schema["label"]))
        if split in expected_rows:
            rules.append(row_count(equal=int(expected_rows[split])))
        for column in feature_columns:
            if column not in schema:
                continue  # reported by the column-set rule
            rules.append(not_null(column, schema[column], mostly=1.0 - max_null_fraction))
            if schema[column].is_numeric():
                low, high = _bounds(column)
                # the default bounds +-1e300 reject infinities
                rules.append(
                    between(
                        column,
                        -FINITE if low is None else low,
                        FINITE if high is None else high,
                        dtype=schema[column],
                    )
                )
        datasets.append(Dataset(split, frame, schema, rules))
    extra = {"input": features_dir, "snapshot_uri": snapshot_uri, "feature_columns": feature_columns}
    return _gate("validate-features", out_dir, datasets, extra, started)


def _to_pandas(frame: pl.DataFrame) -> Any:
    return frame.to_pandas()

"""Measuring the rules: ONE lazy polars pass over every row of a dataset (only the needed columns).

For a row rule the exact number of offending rows, for an aggregate rule one exact value. The result is
a small metrics table per dataset, one row per rule, which GX then decides on (:mod:`.gx`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from features.validation.rules import Rule

EXAMPLES = 5  # offending rows shown per failing rule

METRICS_COLUMNS = (
    "rule",
    "expectation",
    "column",
    "element_count",
    "unexpected_count",
    "allowed_unexpected",
    "observed",
    "min_value",
    "max_value",
)


@dataclass
class Dataset:
    """One dataset of a gate: a lazy scan of its parquet files and the rules that must hold on it."""

    name: str
    scan: pl.LazyFrame
    schema: pl.Schema
    rules: list[Rule]
    # canonical column -> the user's own name: failures name the user's columns
    columns: dict[str, str] = field(default_factory=dict)


def measure(datasets: list[Dataset]) -> list[list[dict[str, Any]]]:
    """The metrics table of every dataset: one row per rule, all datasets measured together.

    The passes run together (``collect_all``), so small datasets do not wait for large ones.
    """
    values = [v.row(0, named=True) for v in pl.collect_all([d.scan.select(_plan(d)) for d in datasets])]
    recount: dict[int, list[pl.Expr]] = {}
    for k, (dataset, found) in enumerate(zip(datasets, values, strict=True)):
        for i, rule in enumerate(dataset.rules):
            if rule.clean_if is not None:
                if found[f"__{i}"]:
                    found[f"__{i}"] = 0
                else:  # the cheap proof did not hold: count exactly
                    assert rule.bad is not None
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
            assert rule.observed is not None
            exprs.append(rule.observed.cast(pl.Float64).alias(f"__{i}"))
    return exprs


def _metrics(dataset: Dataset, values: dict[str, Any]) -> list[dict[str, Any]]:
    rows = int(values["__rows"])
    metrics = []
    for i, rule in enumerate(dataset.rules):
        value = values[f"__{i}"]
        metric: dict[str, Any] = dict.fromkeys(METRICS_COLUMNS, math.nan)
        metric.update(rule=i, expectation=rule.expectation, column=rule.label, element_count=rows)
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


def examples(dataset: Dataset, rule: Rule) -> tuple[list[int], list[Any]]:
    """A few offending rows of a failed row rule: their positions and values (one more filtered scan)."""
    assert rule.bad is not None
    shown = [c for c in rule.shown_columns() if c in dataset.schema]
    found = (
        dataset.scan.with_row_index("__row").filter(rule.bad).select("__row", *shown).head(EXAMPLES).collect()
    )
    values = found.select(shown).rows() if shown else []
    return found["__row"].to_list(), [_plain_example(v[0] if len(v) == 1 else list(v)) for v in values]


def _plain_example(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain_example(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)

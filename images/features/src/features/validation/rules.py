"""The rule language of the gates: one :class:`Rule` per GX expectation, over every row of a dataset.

A row rule marks the rows that break it (``bad``); it holds when at most ``1 - mostly`` of the rows are
bad. An aggregate rule measures one value (``observed``) that must lie within ``bounds``. Each rule
carries the GX expectation it stands for (``expectation`` and ``kwargs``, as GX names them), so the
stored results and the failures are in GX's terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import polars as pl

FINITE = 1.0e300  # |x| above this is treated as infinite
SHOWN_VALUES = 20  # a value set longer than this is stored shortened (the count is kept in `meta`)


@dataclass(frozen=True)
class Rule:
    """One expectation over a whole dataset, measured by polars and decided by GX."""

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
    meta: dict[str, Any] = field(default_factory=dict)
    # what a failure means, in the user's terms; ``{observed}`` stands for an aggregate rule's measured value
    why: str | None = None

    def explained(self, why: str) -> Rule:
        return replace(self, why=why)

    @property
    def label(self) -> str:
        return str(self.column) if self.column is not None else "table"

    @property
    def expected(self) -> str:
        """The expectation's arguments, as shown in failures (the column lists are in ``column``)."""
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in ("column_set", "column_list"))

    def shown_columns(self) -> list[str]:
        return list(self.column) if isinstance(self.column, list) else [self.column] if self.column else []

    def gx_kwargs(self) -> dict[str, Any]:
        """The kwargs of the GX expectation configuration: the column(s) and the arguments."""
        if isinstance(self.column, str):
            return {"column": self.column, **self.kwargs}
        return dict(self.kwargs)


def _present(column: str, dtype: pl.DataType | None) -> pl.Expr:
    # like GX, missing values (null, NaN) are left to the not-null rules
    value = pl.col(column)
    return value.is_not_null() & (value.is_not_nan() if dtype is not None and dtype.is_float() else True)


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
    value = pl.col(column)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        value = value.dt.replace_time_zone(None)  # bounds are naive UTC, like the canonical layout
    inside = pl.lit(True)
    if low is not None:
        inside = inside & (value >= low)
    if high is not None:
        inside = inside & ((value < high) if strict_max else (value <= high))
    kwargs = {k: v for k, v in (("min_value", low), ("max_value", high)) if v is not None}
    if strict_max:
        kwargs["strict_max"] = True
    return Rule("expect_column_values_to_be_between", column, kwargs, bad=_present(column, dtype) & ~inside)


def in_set(column: str, values: list[Any] | pl.Series, dtype: pl.DataType, *, of: str | None = None) -> Rule:
    """Every present value is one of ``values`` (``of`` says where a long set comes from, for the record)."""
    values = values.to_list() if isinstance(values, pl.Series) else list(values)
    if dtype.is_numeric() or dtype == pl.Boolean:
        numbers = [float(v) for v in values if isinstance(v, (int, float))]
        outside = ~pl.col(column).cast(pl.Float64).is_in(numbers)
    elif dtype == pl.String:
        outside = ~pl.col(column).is_in([str(v) for v in values])
    else:
        outside = pl.lit(True)  # a column of another type holds no value of the set
    shown = values if len(values) <= SHOWN_VALUES else values[:SHOWN_VALUES]
    meta = {} if len(values) <= SHOWN_VALUES else {"value_set_size": len(values), "value_set_of": of}
    bad = pl.col(column).is_not_null() & outside
    return Rule("expect_column_values_to_be_in_set", column, {"value_set": shown}, bad=bad, meta=meta)


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
            "expect_table_row_count_to_equal", None, {"value": equal}, observed=pl.len(), bounds=(equal, equal)
        )
    kwargs = {k: v for k, v in (("min_value", low), ("max_value", high)) if v is not None}
    return Rule("expect_table_row_count_to_be_between", None, kwargs, observed=pl.len(), bounds=(low, high))


def _aggregate(expectation: str, column: str, observed: pl.Expr, low: float | None, high: float | None,
               *, strict_min: bool = False) -> Rule:
    kwargs: dict[str, Any] = {k: v for k, v in (("min_value", low), ("max_value", high)) if v is not None}
    if strict_min:
        kwargs["strict_min"] = True
    # a strict minimum is the next float up, inclusive: the same test, with no extra flag to decide on
    minimum = math.nextafter(low, math.inf) if strict_min and low is not None else low
    return Rule(expectation, column, kwargs, observed=observed, bounds=(minimum, high))


def binary_values(column: str, dtype: pl.DataType) -> Rule:
    """Every present value is exactly 0 or 1: numbers, booleans, or text spelling ``'0'``/``'1'``; 0.7,
    ``'1.0'`` or ``'yes'`` are values outside the set, shown as examples, not missing values."""
    if dtype == pl.String:
        outside = ~pl.col(column).is_in(["0", "1"])
    elif dtype.is_numeric() or dtype == pl.Boolean:
        outside = ~pl.col(column).cast(pl.Float64).is_in([0.0, 1.0]).fill_null(False)
    else:
        outside = pl.lit(True)  # dates, lists...: no value of such a column is 0 or 1
    return Rule("expect_column_values_to_be_in_set", column, {"value_set": [0, 1]},
                bad=_present(column, dtype) & outside)


def class_values(column: str, dtype: pl.DataType) -> Rule:
    """Every present value can be a class: text, a boolean, or a whole number (2.5 is a measurement)."""
    if dtype.is_float():
        value = pl.col(column)
        bad = value.is_not_null() & ~(value.is_finite() & (value == value.round(0))).fill_null(False)
    else:
        fits = dtype.is_integer() or dtype in (pl.String, pl.Boolean, pl.Categorical)
        bad = pl.col(column).is_not_null() & pl.lit(not fits)
    return Rule("expect_column_values_to_match_regex", column, {"regex": r"^[^.]*$|^-?\d+(\.0+)?$"}, bad=bad)


def numeric_type(column: str, dtype: pl.DataType) -> Rule:
    # the column's type decides, as in :func:`of_type`: a column of text or dates holds no number
    bad = pl.lit(not dtype.is_numeric())
    return Rule("expect_column_values_to_be_in_type_list", column, {"type_list": ["int", "float"]}, bad=bad)


def min_before(column: str, dtype: pl.DataType, moment: datetime) -> Rule:
    """The column's earliest value is strictly before ``moment`` (a naive UTC datetime)."""
    value = pl.col(column)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        value = value.dt.replace_time_zone(None)
    # measured and bounded in microseconds since the epoch; stated in ISO for GX and the reader
    observed = value.cast(pl.Datetime("us")).min().dt.epoch("us")
    limit = pl.select(pl.lit(moment).cast(pl.Datetime("us")).dt.epoch("us")).item()
    kwargs = {"max_value": moment.isoformat(), "strict_max": True}
    return Rule("expect_column_min_to_be_between", column, kwargs, observed=observed, bounds=(None, limit - 1))


def column_count_between(schema: pl.Schema, low: int | None = None, high: int | None = None) -> Rule:
    kwargs = {k: v for k, v in (("min_value", low), ("max_value", high)) if v is not None}
    return Rule("expect_table_column_count_to_be_between", None, kwargs, observed=pl.lit(len(schema)),
                bounds=(low, high))


def mean_between(column: str, low: float, high: float) -> Rule:
    # NaN counts as missing, as everywhere in the gates
    observed = pl.col(column).cast(pl.Float64).fill_nan(None).mean()
    return _aggregate("expect_column_mean_to_be_between", column, observed, low, high)


def stdev_between(column: str, low: float | None = None, high: float | None = None, *, strict_min: bool = False) -> Rule:
    observed = pl.col(column).cast(pl.Float64).fill_nan(None).std()
    return _aggregate("expect_column_stdev_to_be_between", column, observed, low, high, strict_min=strict_min)


def distinct_count_between(column: str, low: int | None = None, high: int | None = None) -> Rule:
    observed = pl.col(column).drop_nulls().n_unique()
    return _aggregate("expect_column_unique_value_count_to_be_between", column, observed, low, high)


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


def finite_between(column: str, dtype: pl.DataType, low: float | None, high: float | None) -> Rule:
    """Within the declared bounds, and finite: a missing bound is +-:data:`FINITE`, which rejects infinities."""
    return between(column, -FINITE if low is None else low, FINITE if high is None else high, dtype=dtype)

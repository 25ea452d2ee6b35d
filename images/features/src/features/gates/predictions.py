"""Gate 3, on the model's output: Great Expectations 1.x on a day's predictions before they are published.

Exactly one score per entity of the spine (same row count, unique ids, the same set both ways), every score
a probability in [0, 1], no nulls (NaN counts as null), and a sane distribution (not constant, mean inside
(0.001, 0.999)). Same machinery as the data gates (:mod:`features.gates`): ``validation.json`` with GX's
results, a manifest with ``success`` and ``failures``, and :class:`~features.gates.GateFailed` naming each
failing expectation and column.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl

from features import io
from features.gates import Check, _finish, _read, _to_pandas

MIN_SCORE_STD = 1e-6
MEAN_BOUNDS = (0.001, 0.999)
NOT_NULL = ("entity_id", "score_date", "score", "model_name", "model_version", "alias", "dag_run_id")


def validate_predictions(
    predictions_dir: str,
    spine_dir: str,
    out_dir: str,
    *,
    min_std: float = MIN_SCORE_STD,
    mean_bounds: tuple[float, float] = MEAN_BOUNDS,
) -> dict[str, Any]:
    """Validate ``predictions.parquet`` of the score step against ``spine.parquet`` of extract-scoring."""
    import great_expectations.expectations as gxe

    started = time.perf_counter()
    predictions_uri = io.read_manifest(predictions_dir)["outputs"]["predictions"]
    spine_uri = io.read_manifest(spine_dir)["outputs"]["spine"]
    # NaN reads as missing in pandas: count it with the nulls, so "no nulls" also means "no NaN"
    predictions = _read(predictions_uri, None).with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None))
    spine = _read(spine_uri, ["entity_id"])
    spine_ids = spine["entity_id"].cast(pl.String).unique().sort().to_list()
    scored_ids = predictions["entity_id"].cast(pl.String).drop_nulls().unique().sort().to_list()

    prediction_checks: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(NOT_NULL), exact_match=False),
        gxe.ExpectTableRowCountToEqual(value=spine.height),
        gxe.ExpectColumnValuesToBeUnique(column="entity_id"),
        gxe.ExpectColumnValuesToBeInSet(column="entity_id", value_set=spine_ids),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in NOT_NULL if c in predictions.columns),
        gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnStdevToBeBetween(column="score", min_value=min_std, strict_min=True),
        gxe.ExpectColumnMeanToBeBetween(column="score", min_value=mean_bounds[0], max_value=mean_bounds[1]),
    ]
    # the other direction of "set-equal": every spine entity has a score (names the missing ones)
    spine_checks = [gxe.ExpectColumnValuesToBeInSet(column="entity_id", value_set=scored_ids)]
    checks = [
        Check("predictions", _to_pandas(predictions), prediction_checks),
        Check("spine", _to_pandas(spine), spine_checks),
    ]
    extra = {"input": predictions_dir, "spine": spine_dir}
    return _finish("validate-predictions", out_dir, checks, extra, started)

"""Gate 3, ``validate-predictions``: a day's predictions, before they are published.

Exactly one score per entity of the spine (same row count, unique ids, the same set both ways), no nulls
(NaN counts as null; ``predicted_class`` is null for regression only) and a sane distribution (not
constant). Per task, as the score step recorded it: binary, every score a probability in [0, 1] with a mean
inside (0.001, 0.999) and predicted_class "0"/"1"; multiclass, every score (P(predicted class)) in [0, 1]
and predicted_class one of the model's classes; regression, every score finite. The same rules,
measurement and GX decision as the data gates.
"""

from __future__ import annotations

import time

import polars as pl
from mlcontract import storage
from mlcontract.manifests import GateManifest, ScoreManifest, ScoringExtractManifest
from mlcontract.names import BINARY, ENTITY, PREDICTED_CLASS, PREDICTION_COLUMNS, REGRESSION, SCORE

from features.validation import rules as r
from features.validation.gx import prefetch_gx
from features.validation.measure import Dataset
from features.validation.run import run_gate

MIN_SCORE_STD = 1e-6
MEAN_BOUNDS = (0.001, 0.999)


def validate_predictions(
    predictions_dir: str,
    spine_dir: str,
    out_dir: str,
    *,
    min_std: float = MIN_SCORE_STD,
    mean_bounds: tuple[float, float] = MEAN_BOUNDS,
) -> GateManifest:
    """Validate the ``score`` step's predictions against the ``extract-scoring`` step's spine."""
    started = time.perf_counter()
    prefetch_gx()
    scored = ScoreManifest.read(predictions_dir)
    predictions = storage.scan_parquet(scored.output("predictions"))
    spine = storage.scan_parquet(ScoringExtractManifest.read(spine_dir).output("spine"))
    # the id sets of both sides (one column each), for the set-equality rules
    ids = [frame.select(pl.col(ENTITY).cast(pl.String).drop_nulls().unique().sort()) for frame in (predictions, spine)]
    schema = predictions.collect_schema()
    scored_ids, spine_ids = (found.to_series() for found in pl.collect_all(
        [ids[0] if ENTITY in schema else pl.LazyFrame({ENTITY: []}, schema={ENTITY: pl.String}), ids[1]]
    ))
    spine_rows = spine.select(pl.len()).collect().item()

    rules = [r.columns_present(list(PREDICTION_COLUMNS), schema), r.row_count(equal=spine_rows)]
    if ENTITY in schema:
        rules += [r.unique([ENTITY]), r.in_set(ENTITY, spine_ids, schema[ENTITY], of="the spine's entity_id")]
    regression = scored.task == REGRESSION
    required = [c for c in PREDICTION_COLUMNS if c in schema and not (regression and c == PREDICTED_CLASS)]
    rules += [r.not_null(c, schema[c]) for c in required]
    if SCORE in schema:
        if regression:
            rules.append(r.finite_between(SCORE, schema[SCORE], None, None))
        else:
            rules.append(r.between(SCORE, 0.0, 1.0, dtype=schema[SCORE]))
        rules.append(r.stdev_between(SCORE, min_std, strict_min=True))
        if scored.task == BINARY:
            rules.append(r.mean_between(SCORE, *mean_bounds))
    if PREDICTED_CLASS in schema and not regression:
        classes = ["0", "1"] if scored.task == BINARY else list(scored.classes or [])
        rules.append(r.in_set(PREDICTED_CLASS, classes, schema[PREDICTED_CLASS], of="the model's classes"))
    spine_schema = spine.collect_schema()
    # the other direction of "set-equal": every spine entity has a score (names the missing ones)
    spine_rules = [r.in_set(ENTITY, scored_ids, spine_schema[ENTITY], of="the predictions' entity_id")]
    datasets = [Dataset("predictions", predictions, schema, rules), Dataset("spine", spine, spine_schema, spine_rules)]
    return run_gate("validate-predictions", out_dir, datasets, started, input=predictions_dir, spine=spine_dir)

"""GX decides: the metrics table of each dataset (one row per rule, :mod:`.measure`) is validated by GX.

Three expectations decide every rule, the same way GX's SQL engine decides on counts computed by a
database: the offending rows of each row rule are within its allowance (``mostly``), and the observed
value of each aggregate rule is within its bounds. GX's pandas engine sees only the metrics table, never
the data, so a gate costs one columnar scan, not a pandas conversion plus per-row Python.

What GX returns here is about the metrics table; :mod:`.report` turns its verdict into one result per
rule, under the rule's real expectation and column.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from features.validation.measure import METRICS_COLUMNS


@dataclass
class Verdict:
    """GX's verdict on one dataset: the rules it found broken, and any expectation GX failed to evaluate."""

    broken: set[int] = field(default_factory=set)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (GX expectation, exception message)


def prefetch_gx() -> None:
    """Start importing GX (seconds of pure Python) in the background while polars scans the data."""
    if "great_expectations.expectations" in sys.modules:
        return
    threading.Thread(
        target=importlib.import_module, args=("great_expectations.expectations",), daemon=True
    ).start()


@contextlib.contextmanager
def _no_batch_fingerprint() -> Iterator[None]:
    # GX fingerprints every in-memory pandas batch by hashing all of its cells. The fingerprint is only a
    # batch marker that nothing here reads, so skip it.
    from great_expectations.execution_engine import pandas_execution_engine as engine

    saved = engine.HASH_THRESHOLD
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = saved


def _deciding_expectations(dataset: str) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="allowed_unexpected",
            column_B="unexpected_count",
            or_equal=True,
            description=f"Row rules on {dataset}: the rows that break each rule are within its allowance.",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="observed",
            column_B="min_value",
            or_equal=True,
            description=f"Aggregate rules on {dataset}: the observed value is at least the minimum.",
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="max_value",
            column_B="observed",
            or_equal=True,
            description=f"Aggregate rules on {dataset}: the observed value is at most the maximum.",
        ),
    ]


def decide(metrics: dict[str, list[dict[str, Any]]]) -> dict[str, Verdict]:
    """GX's verdict on each dataset's metrics table (an unmeasurable aggregate, NaN, breaks its bounds)."""
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # GX resets it on import
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("gate")
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": ["rule"]}
    verdicts: dict[str, Verdict] = {}
    with _no_batch_fingerprint():
        for name, table in metrics.items():
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
            suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=_deciding_expectations(name)))
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite)
            )
            frame = pd.DataFrame(table, columns=list(METRICS_COLUMNS))
            outcome = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
            verdict = verdicts[name] = Verdict()
            for result in outcome.results:
                if result.success:
                    continue
                broken = (result.result or {}).get("unexpected_index_list") or []
                if broken:
                    verdict.broken.update(int(b["rule"]) for b in broken)
                else:
                    message = (result.exception_info or {}).get("exception_message") or "failed without a result"
                    verdict.errors.append((result.expectation_config.type, str(message)))
    return verdicts

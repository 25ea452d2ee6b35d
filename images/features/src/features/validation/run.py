"""Running a gate: measure the rules (one polars pass per dataset), let GX decide, report and record."""

from __future__ import annotations

import logging
import time
from typing import Any

from mlcontract import storage
from mlcontract.manifests import GateManifest
from mlcontract.names import VALIDATION_FILE

from features.errors import GateFailed
from features.validation.gx import decide
from features.validation.measure import Dataset, measure
from features.validation.report import log_failures, suite_result, write_results

log = logging.getLogger(__name__)


def run_gate(gate: str, out_dir: str, datasets: list[Dataset], started: float, **recorded: Any) -> GateManifest:
    """Validate ``datasets``; write ``validation.json`` and the gate manifest; raise :class:`GateFailed`
    naming every failing expectation when one fails. ``recorded`` goes into the manifest as it is."""
    storage.begin_rewrite(out_dir)  # a rerun's old verdict never stands beside new results
    metrics = measure(datasets)
    measure_seconds = round(time.perf_counter() - started, 3)
    validate_started = time.perf_counter()
    verdicts = decide({d.name: m for d, m in zip(datasets, metrics, strict=True)})
    suites, failures = {}, []
    for dataset, measured in zip(datasets, metrics, strict=True):
        suites[dataset.name], found = suite_result(gate, dataset, measured, verdicts[dataset.name])
        failures += found
    results_uri = storage.join_uri(out_dir, VALIDATION_FILE)
    write_results(results_uri, suites)
    manifest = GateManifest(
        step=gate,
        outputs={"results": results_uri},
        results_uri=results_uri,
        success=not failures,
        failures=failures,
        rows={d.name: rows_measured(m) for d, m in zip(datasets, metrics, strict=True)},
        expectations=sum(len(d.rules) for d in datasets),
        seconds=round(time.perf_counter() - started, 3),
        validate_seconds=round(time.perf_counter() - validate_started, 3),
        measure_seconds=measure_seconds,
        **recorded,
    )
    manifest.write(out_dir)
    log.info("%s: %d expectations on %s rows, %d failed, %.2fs", gate, manifest.expectations,
             f"{sum(manifest.rows.values()):,}", len(failures), manifest.seconds)
    if failures:
        log_failures(gate, failures)
        raise GateFailed(gate, failures)
    return manifest


def rows_measured(metrics: list[dict[str, Any]]) -> int:
    """The rows of a dataset, as measured with its rules."""
    return int(metrics[0]["element_count"]) if metrics else 0

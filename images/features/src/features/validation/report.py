"""What a gate reports: one GX result per rule, under the rule's real expectation and column.

For each dataset, an ``ExpectationSuiteValidationResult`` whose results are ``ExpectationValidationResult``s
with the rule's own ``ExpectationConfiguration`` (e.g. ``expect_column_values_to_not_be_null`` with
``column="amount"``), the verdict GX reached on the metrics table (:mod:`.gx`), and the measured values
(``element_count``, ``unexpected_count``, ``unexpected_percent`` and, on failure, a few offending values
and row positions; or ``observed_value``). These are stored in ``validation.json`` (what the training run
logs to MLflow); the failures also go into the step's :class:`~mlcontract.manifests.GateManifest`, the log
and the :class:`~features.errors.GateFailed` message.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from mlcontract import storage
from mlcontract.manifests import GateFailure

from features.validation.gx import Verdict
from features.validation.measure import Dataset, examples
from features.validation.rules import Rule

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """A JSON-safe number: None for an unmeasured or unbounded one (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _measured(dataset: Dataset, rule: Rule, metric: dict[str, Any], failed: bool) -> dict[str, Any]:
    """The GX ``result`` of one rule: what was measured, in GX's keys."""
    rows = int(metric["element_count"])
    result: dict[str, Any] = {"element_count": rows}
    if rule.missing is not None:
        result["observed_value"] = list(dataset.schema.names())
        result["details"] = {"mismatched": {"missing": rule.missing}}
    elif rule.bad is not None:
        count = int(metric["unexpected_count"])
        result["unexpected_count"] = count
        result["unexpected_percent"] = 100.0 * count / rows if rows else 0.0
        if failed:
            positions, values = examples(dataset, rule)
            result["partial_unexpected_list"] = values
            result["partial_unexpected_index_list"] = positions
    else:
        result["observed_value"] = plain(metric["observed"])
    return result


def failure(dataset: str, rule: Rule, result: dict[str, Any], columns: dict[str, str] | None = None) -> GateFailure:
    """One failing rule in the user's terms: what was seen, against what was expected, under the user's
    column names (``columns``: canonical -> the user's)."""
    names = columns or {}
    column = [names.get(c, c) for c in rule.column] if isinstance(rule.column, list) else (
        names.get(rule.column, rule.column) if rule.column else None
    )
    if rule.missing is not None:
        missing = [names.get(c, c) for c in rule.missing]
        observed: Any = {"missing": missing}
        details = f"missing {missing}"
    elif rule.bad is not None:
        count, rows = result["unexpected_count"], result.get("partial_unexpected_index_list", [])
        values = result.get("partial_unexpected_list", [])
        observed = {
            "unexpected_count": count,
            "unexpected_percent": result["unexpected_percent"],
            "examples": values,
            "rows": rows,
        }
        details = f"{count:,} unexpected value(s)"
        if rule.expectation == "expect_column_values_to_not_be_null":
            details += f", e.g. rows {rows}"
        else:
            details += f", e.g. {values} (rows {rows})"
    else:
        observed = result["observed_value"]
        details = f"observed {observed!r}"
    if rule.why is not None:  # the rule says what it means; a row rule's examples follow
        why = rule.why.format(observed=observed)
        details = why if rule.bad is None else f"{why}: {details}"
    elif rule.expected:
        details += f" (expected {rule.expected})"
    return GateFailure(dataset=dataset, expectation=rule.expectation, column=column, observed=observed,
                       details=details)


def suite_result(
    gate: str, dataset: Dataset, metrics: list[dict[str, Any]], verdict: Verdict
) -> tuple[Any, list[GateFailure]]:
    """The dataset's ``ExpectationSuiteValidationResult`` (one result per rule) and its failures."""
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    results, failures = [], []
    for i, (rule, metric) in enumerate(zip(dataset.rules, metrics, strict=True)):
        failed = i in verdict.broken
        measured = _measured(dataset, rule, metric, failed)
        meta = dict(rule.meta)
        if isinstance(rule.column, str) and dataset.columns.get(rule.column, rule.column) != rule.column:
            meta["source_column"] = dataset.columns[rule.column]  # what the user's warehouse calls it
        configuration = ExpectationConfiguration(type=rule.expectation, kwargs=rule.gx_kwargs(), meta=meta or None)
        results.append(ExpectationValidationResult(success=not failed, expectation_config=configuration, result=measured))
        if failed:
            failures.append(failure(dataset.name, rule, measured, dataset.columns))
    for expectation, message in verdict.errors:  # GX could not evaluate the metrics table: say so
        failures.append(GateFailure(dataset=dataset.name, expectation=expectation, column=None,
                                    observed={"exception": message}, details=f"raised {message}"))
    passed = sum(r.success for r in results)
    suite = ExpectationSuiteValidationResult(
        success=not failures,
        results=results,
        suite_name=f"{gate}.{dataset.name}",
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results) if results else 100.0,
        },
        meta={"dataset": dataset.name, "rows": int(metrics[0]["element_count"]) if metrics else 0},
    )
    return suite, failures


def write_results(uri: str, suites: dict[str, Any]) -> None:
    """``validation.json``: each dataset's suite result, as GX serialises it."""
    storage.write_json(uri, {name: suite.to_json_dict() for name, suite in suites.items()})


def log_failures(gate: str, failures: list[GateFailure]) -> None:
    for f in failures:
        log.warning("%s: %s: %s on %s: %s", gate, f.dataset, f.expectation, f.column or "table", f.details)

"""Data gates with Great Expectations 1.x: gate 1 on the raw extract, gate 2 on the feature snapshot.

Each gate builds expectation suites in an ephemeral GX context, validates every row of the columns it
checks (read from parquet with polars, only the needed columns, handed to GX's pandas engine), writes
the full GX results (``validation.json``) and a manifest with ``success`` and ``failures``, and raises
:class:`GateFailed` naming every failing expectation and column when the data is bad.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from features import io

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# Feature names that promise a range (the build step's naming convention); checked on every row.
NON_NEGATIVE_MARKERS = ("count", "n_", "num_", "events", "days", "tenure", "amount", "spend", "sum")
UNIT_INTERVAL_MARKERS = ("share", "ratio", "fraction", "pct")
FINITE = 1.0e300  # |x| above this is treated as infinite
# GX checks datetime bounds with one Python call per row (~40 s per 10 M rows); the same check on the
# timestamp's epoch microseconds is vectorised. Such columns carry this suffix, dropped in failures.
EPOCH_US = "__epoch_us"


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
    """One dataset to validate: a pandas frame and the expectations that must hold on it."""

    name: str
    frame: Any  # pandas.DataFrame
    expectations: list[Any]


@contextlib.contextmanager
def _no_batch_fingerprint() -> Iterator[None]:
    # GX fingerprints every in-memory pandas batch by hashing all of its cells (~2 s per 10 M rows, most
    # of a gate's time). The fingerprint is only a batch marker that nothing here reads, so skip it.
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
            outcome = definition.run(batch_parameters={"dataframe": check.frame}, result_format="SUMMARY")
            results[check.name] = outcome.to_json_dict()
            for result in outcome.results:
                if not result.success:
                    failures.append(_failure(check.name, result))
    return results, failures


def _failure(dataset: str, result: Any) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_set")
    body = result.result or {}
    epoch = isinstance(column, str) and column.endswith(EPOCH_US)
    if epoch:
        column = column.removesuffix(EPOCH_US)
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
            "examples": [_show(v, epoch) for v in (body.get("partial_unexpected_list") or [])[:5]],
        }
        details = f"{observed['unexpected_count']} unexpected value(s)"
        if "null" not in config.type:
            details += f", e.g. {observed['examples']}"
    bounds = {
        k: _show(kwargs[k], epoch)
        for k in ("min_value", "max_value", "value_set", "value")
        if kwargs.get(k) is not None
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


def _show(value: Any, epoch: bool) -> str:
    if epoch and isinstance(value, (int, float)):
        return (datetime(1970, 1, 1) + timedelta(microseconds=int(value))).isoformat()
    return str(value)


def _with_epoch(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    return frame.with_columns(pl.col(column).dt.epoch("us").alias(column + EPOCH_US))


def _epoch_us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1)) // timedelta(microseconds=1)


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
    import great_expectations as gx  # noqa: F401 - import time is reported separately from the checks

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
        "rows": {c.name: len(c.frame) for c in checks},
        "expectations": sum(len(c.expectations) for c in checks),
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
    import great_expectations.expectations as gxe

    started = time.perf_counter()
    extract = io.read_manifest(extract_dir)
    outputs = extract["outputs"]
    cutoff = datetime.fromisoformat(extract["cutoff"]) if extract.get("cutoff") else None

    parts = _event_parts(outputs["events"])
    available = _read(parts[0], None).columns if parts else []
    wanted = [c for c in ("entity_id", "event_ts", "amount") if c in available]
    events = _read(parts, wanted) if parts else pl.DataFrame()
    event_checks = [
        gxe.ExpectTableColumnsToMatchSet(column_set=["entity_id", "event_ts"], exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_events),
        gxe.ExpectColumnValuesToNotBeNull(column="entity_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="event_ts"),
        gxe.ExpectColumnValuesToBeOfType(column="event_ts", type_="datetime64[us]"),
    ]
    if cutoff is not None:
        events = _with_epoch(events, "event_ts")
        event_checks.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="event_ts" + EPOCH_US, max_value=_epoch_us(cutoff), strict_max=True
            )
        )
    if "amount" in events.columns:
        event_checks.append(
            gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=0, max_value=max_amount)
        )

    labels = _read(outputs["labels"], None)
    label_checks = [
        gxe.ExpectTableColumnsToMatchSet(column_set=["entity_id", "snapshot_ts", "label"], exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="entity_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="snapshot_ts"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        gxe.ExpectColumnMeanToBeBetween(column="label", min_value=min_label_rate, max_value=max_label_rate),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["entity_id", "snapshot_ts"]),
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="snapshot_ts", min_value=min_snapshots),
    ]
    if cutoff is not None:
        labels = _with_epoch(labels, "snapshot_ts")
        label_checks.append(
            gxe.ExpectColumnValuesToBeBetween(column="snapshot_ts" + EPOCH_US, max_value=_epoch_us(cutoff))
        )
    checks = [
        Check("events", _to_pandas(events), event_checks),
        Check("labels", _to_pandas(labels), label_checks),
    ]
    if "entities" in outputs:
        entities = _read(outputs["entities"], ["entity_id"])
        checks.append(
            Check(
                "entities",
                _to_pandas(entities),
                [
                    gxe.ExpectColumnValuesToNotBeNull(column="entity_id"),
                    gxe.ExpectColumnValuesToBeUnique(column="entity_id"),
                ],
            )
        )
    return _finish("validate-raw", out_dir, checks, {"input": extract_dir}, started)


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
    import great_expectations.expectations as gxe

    started = time.perf_counter()
    build = io.read_manifest(features_dir)
    snapshot_uri = build["snapshot_uri"]
    snapshot = (
        io.read_manifest(snapshot_uri) if io.exists(io.join_uri(snapshot_uri, io.MANIFEST_NAME)) else build
    )
    feature_columns = list(snapshot.get("feature_columns") or build.get("feature_columns") or [])
    expected_rows = snapshot.get("rows") or build.get("rows") or {}
    checks = []
    for split in SPLITS:
        frame = _read(io.join_uri(snapshot_uri, f"{split}.parquet"), None)
        numeric = [c for c in feature_columns if c in frame.columns and frame.schema[c].is_numeric()]
        expectations: list[Any] = [
            gxe.ExpectTableColumnsToMatchSet(
                column_set=["entity_id", "snapshot_ts", "label", *feature_columns], exact_match=False
            ),
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="entity_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        ]
        if split in expected_rows:
            expectations.append(gxe.ExpectTableRowCountToEqual(value=int(expected_rows[split])))
        for column in feature_columns:
            if column not in frame.columns:
                continue  # reported by the column-set expectation
            mostly = 1.0 - max_null_fraction
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly))
            if column in numeric:
                low, high = _bounds(column)
                expectations.append(
                    gxe.ExpectColumnValuesToBeBetween(
                        column=column,
                        min_value=-FINITE if low is None else low,
                        max_value=FINITE if high is None else high,
                    )
                )
        # NaN reads as missing in pandas: count it with the nulls, so "no nulls" also means "no NaN"
        frame = frame.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None))
        checks.append(Check(split, _to_pandas(frame), expectations))
    extra = {"input": features_dir, "snapshot_uri": snapshot_uri, "feature_columns": feature_columns}
    return _finish("validate-features", out_dir, checks, extra, started)


def _to_pandas(frame: pl.DataFrame) -> Any:
    return frame.to_pandas()

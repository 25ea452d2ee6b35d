"""Each generator shape through extract -> build (inferred spec, automatic split) -> the trainer's fit,
with no configuration beyond table and column names: its test metric against the generator's oracle.

    .venv/bin/python bench/bench_shapes.py [--customers 10000] [--shapes retail,feature-table,...]
                                           [--workdir .local/bench/shapes]

Per shape: ``features.synth_shapes`` writes a SQLite warehouse; ``python -m features extract`` reads it with
the shape's own table and column names (a ready-made feature table: ``--features-table``); ``python -m
features build --task <task>`` infers the spec and splits automatically; ``trainer.model.fit`` (default
hyperparameters, seed 42, early stopping on the task's metric) fits on train/valid; the test split is scored
and compared with the oracle on exactly those rows (``synth_shapes.oracle_test_rows``). The demo shape is
covered by the training pipeline's own end-to-end test. Writes ``bench/results/shapes.json`` and
``shapes.md``; the quality bar is test metric >= 0.97x the oracle's (log loss and RMSE: <= 1/0.97 x).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import machine, write_results

BAR = 0.97
SHAPES = ("retail", "feature-table", "multiclass", "regression")


def extract_arguments(source) -> list[str]:
    if source.features_table:
        relation = ["--features-table", source.features_table]
    else:
        relation = [
            "--events-table",
            source.events_table,
            "--labels-table",
            source.labels_table,
            "--timestamp-column",
            source.timestamp_column,
        ]
    columns = [
        "--entities-table",
        "",
        "--entity-key",
        source.entity_key,
        "--label-column",
        source.label_column,
    ]
    if source.snapshot_column:
        columns += ["--snapshot-column", source.snapshot_column]
    return ["extract", *relation, *columns]


def evaluate(task: str, y, output, classes: list[str]) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics

    if task == "binary":
        return {"auc": metrics.roc_auc_score(y, output)}
    if task == "multiclass":
        return {
            "accuracy": metrics.accuracy_score(y, np.asarray(output).argmax(axis=1)),
            "log_loss": metrics.log_loss(y, output, labels=list(range(len(classes)))),
        }
    return {"r2": metrics.r2_score(y, output), "rmse": float(np.sqrt(metrics.mean_squared_error(y, output)))}


def run_shape(shape: str, customers: int, workdir: Path) -> dict:
    import polars as pl
    from features import synth_shapes
    from features.cli import commands
    from mlcontract import storage
    from mlcontract.cli import run
    from mlcontract.manifests import BuildManifest
    from trainer.model import fit, predict_proba

    folder = workdir / shape
    config = synth_shapes.ShapeConfig(shape=shape, customers=customers)
    data = synth_shapes.make(config)
    report = synth_shapes.report_for(data, config)
    uri = f"sqlite:///{folder}/warehouse.db"
    folder.mkdir(parents=True, exist_ok=True)
    synth_shapes.write(data, uri, {})
    os.environ["WAREHOUSE_URI"] = uri
    source = data.source
    if run(commands(), [*extract_arguments(source), "--out", str(folder / "extract")]) != 0:
        return {"error": "extract failed"}
    started = time.perf_counter()
    build_argv = ["build", "--extract", str(folder / "extract"), "--snapshot-root", str(folder / "snapshots")]
    if run(commands(), [*build_argv, "--task", source.task, "--out", str(folder / "build")]) != 0:
        return {"error": "build failed"}
    build_seconds = time.perf_counter() - started
    build = BuildManifest.read(str(folder / "build"))
    columns = build.feature_columns
    parts = {}
    for split in ("train", "valid", "test"):
        frame = pl.read_parquet(storage.join_uri(build.snapshot_uri, f"{split}.parquet"))
        parts[split] = (frame.select(pl.col(columns).cast(pl.Float32)).to_numpy(), frame["label"].to_numpy())
    classes = build.classes or []
    result = fit(
        parts["train"],
        parts["valid"],
        columns,
        None,
        seed=42,
        log_every=10_000,
        label=shape,
        task=source.task,
        num_class=len(classes) or None,
    )
    output = predict_proba(result.booster, parts["test"][0], columns)
    test = evaluate(source.task, parts["test"][1], output, classes)
    oracle = report.oracle_test
    ratios = {}
    for name, value in test.items():
        lower_is_better = name in ("log_loss", "rmse")
        ratios[name] = (oracle[name] / value) if lower_is_better else (value / oracle[name])
    return {
        "task": source.task,
        "rows": report.rows,
        "split_method": build.split_method,
        "split_rows": build.rows,
        "features": len(columns),
        "build_seconds": build_seconds,
        "test": test,
        "oracle_test": oracle,
        "of_oracle": ratios,
        "meets_bar": all(r >= BAR for r in ratios.values()),
    }


def markdown(report: dict) -> str:
    lines = [
        "# Generated shapes: trained with no configuration beyond table and column names",
        "",
        (
            f"{report['customers']:,} entities per shape; {report['machine']}. Extract from SQLite with the "
            "shape's own names, build with the inferred spec and the automatic split, `trainer.model.fit` "
            "(default hyperparameters, seed 42); metrics on the test split, the oracle on the same rows. "
            f"Bar: >= {BAR}x the oracle (log loss, RMSE: oracle / ours)."
        ),
        "",
        "| shape | task | split | features | test metric | oracle | of oracle | bar met |",
        "|---|---|---|---:|---|---|---:|---|",
    ]
    for shape, r in report["shapes"].items():
        if "error" in r:
            lines.append(f"| {shape} | – | – | – | {r['error']} | – | – | – |")
            continue
        metric = ", ".join(f"{k} {v:.4f}" for k, v in r["test"].items())
        oracle = ", ".join(f"{k} {v:.4f}" for k, v in r["oracle_test"].items())
        ratio = ", ".join(f"{v:.3f}" for v in r["of_oracle"].values())
        lines.append(
            f"| {shape} | {r['task']} | {r['split_method']} ({r['split_rows']['test']:,} test rows) | "
            f"{r['features']} | {metric} | {oracle} | {ratio} | {r['meets_bar']} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--workdir", default=".local/bench/shapes")
    options = parser.parse_args()
    workdir = Path(options.workdir).resolve() / f"run-{int(time.time())}"
    report = {"customers": options.customers, "machine": machine(), "shapes": {}}
    for shape in options.shapes.split(","):
        print(f"== {shape}", flush=True)
        report["shapes"][shape] = run_shape(shape, options.customers, workdir)
        print(f"  {report['shapes'][shape]}", flush=True)
    write_results("shapes", report, markdown(report))


if __name__ == "__main__":
    main()

"""Retail churn: the inferred-spec build against featuretools DFS and a recency/frequency/monetary baseline.

    .venv/bin/python bench/bench_retail.py [--sizes 2500,5000,10000] [--quality-size 5000]
                                           [--workdir .local/bench/retail] [--timeout 600] [--quality-timeout 1800]
                                           [--skip-featuretools]

Data: ``features.synth_shapes`` retail shape (``transactions``: client_ref, purchased_at, items, amount_usd,
used_coupon, store_code; ``churn_at_cutoff`` at 4 monthly cutoffs), one warehouse per size (SQLite, plus
parquet copies for the other tools), generated once and reused.

Per size, each in a fresh child process (time measured inside it around the work, imports excluded; peak
memory the child's own max RSS):

1. **ours**: ``python -m features extract`` (not timed) then ``python -m features build`` with no feature
   spec (inferred from the extract) and the automatic split: 4 cutoffs -> time split (train: the first
   two, valid: the third, test: the latest); the fastest of ``--repeat`` runs (featuretools runs once).
2. **featuretools** 1.31 deep feature synthesis (``bench/featuretools_dfs.py``, depth 2, cutoff times =
   the spine, in an isolated environment: it does not run under pandas 3), data exchanged as parquet.
   Skipped at the larger sizes once it ran past ``--timeout`` at a smaller one (except at the quality size,
   where it may take up to ``--quality-timeout``: its speed there is reported but not used for the target).
3. **RFM**: recency, frequency, monetary value and 30/90-day counts and sums (polars).

Quality (at ``--quality-size``): each feature set, joined to the build's own spine rows and split, goes
through the same ``trainer.model.fit`` (default hyperparameters, seed 42, early stopping on valid AUC);
test AUC on the latest cutoff, next to the generator's oracle AUC on those rows.

Writes ``bench/results/retail.json`` and ``bench/results/retail.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import best_of, machine, measure_command, write_results

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
UV = ROOT / ".local" / "bootstrap" / "bin" / "uv"
FEATURETOOLS_ENV = [
    "--with",
    "featuretools==1.31.0",
    "--with",
    "pandas<2.3",
    "--with",
    "numpy<2.1",
    "--with",
    "pyarrow",
    "--with",
    "setuptools<81",  # woodwork still imports pkg_resources
]
CUTOFFS = 4
SEED = 7
TARGET_SPEEDUP = 100.0


# ---------------------------------------------------------------------------------------------- children


def generate(clients: int, workdir: Path) -> dict:
    """The retail warehouse of ``clients`` clients (SQLite + parquet copies + the truth); reused."""
    from features import synth_shapes

    folder = workdir / f"data-{clients}"
    done = folder / "report.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    config = synth_shapes.ShapeConfig(shape="retail", customers=clients, cutoffs=CUTOFFS, seed=SEED)
    data = synth_shapes.make(config)
    report = synth_shapes.report_for(data, config).to_json()
    synth_shapes.write(data, f"sqlite:///{folder / 'warehouse.db'}", {"generator": "bench_retail"})
    data.tables["transactions"].write_parquet(folder / "transactions.parquet")
    data.tables["churn_at_cutoff"].write_parquet(folder / "spine.parquet")
    data.truth.write_parquet(folder / "truth.parquet")
    done.write_text(json.dumps(report))
    return report


def extract(folder: str, out: str) -> dict:
    from features.cli import commands
    from mlcontract.cli import run

    os.environ["WAREHOUSE_URI"] = f"sqlite:///{folder}/warehouse.db"
    argv = [
        "extract",
        "--events-table",
        "transactions",
        "--labels-table",
        "churn_at_cutoff",
        "--entities-table",
        "",
        "--entity-key",
        "client_ref",
        "--timestamp-column",
        "purchased_at",
        "--snapshot-column",
        "cutoff_ts",
        "--label-column",
        "churned",
        "--out",
        out,
    ]
    if run(commands(), argv) != 0:
        raise SystemExit("extract failed")
    return {"extract": out}


def build(extract_dir: str, out: str, snapshot_root: str) -> dict:
    """The product's build step, no feature spec given (inferred), automatic split."""
    import polars  # noqa: F401  (imported before the clock starts, like the other tools' libraries)
    from features.cli import commands
    from mlcontract.cli import run
    from mlcontract.manifests import BuildManifest

    started, cpu_started = time.perf_counter(), time.process_time()
    code = run(
        commands(), ["build", "--extract", extract_dir, "--snapshot-root", snapshot_root, "--out", out]
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if code != 0:
        raise SystemExit("build failed")
    manifest = BuildManifest.read(out)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # every thread's: polars uses all cores
        "features": len(manifest.feature_columns),
        "rows": sum(manifest.rows.values()),
    }


def rfm(folder: str, out: str) -> dict:
    """Recency, frequency, monetary value, 30/90-day counts and sums, strictly before each cutoff."""
    import polars as pl

    transactions = pl.read_parquet(f"{folder}/transactions.parquet")
    spine = pl.read_parquet(f"{folder}/spine.parquet").select("client_ref", "cutoff_ts")
    started = time.perf_counter()
    history = spine.join(transactions, on="client_ref").filter(pl.col("purchased_at") < pl.col("cutoff_ts"))
    age_days = (pl.col("cutoff_ts") - pl.col("purchased_at")).dt.total_seconds() / 86_400
    features = history.group_by("client_ref", "cutoff_ts").agg(
        recency_days=age_days.min(),
        frequency=pl.len(),
        monetary=pl.col("amount_usd").sum(),
        count_30d=(age_days <= 30).sum(),
        count_90d=(age_days <= 90).sum(),
        sum_30d=pl.col("amount_usd").filter(age_days <= 30).sum(),
        sum_90d=pl.col("amount_usd").filter(age_days <= 90).sum(),
    )
    features = spine.join(features, on=["client_ref", "cutoff_ts"], how="left")
    seconds = time.perf_counter() - started
    features.write_parquet(out)
    return {"seconds": seconds, "features": features.width - 2, "rows": features.height}


def quality(build_dir: str, folder: str, feature_sets: str) -> dict:
    """Test AUC of each feature set through the same trainer fit on the build's own split."""
    import numpy as np
    import polars as pl
    from features.synth import auc
    from mlcontract import storage
    from mlcontract.manifests import BuildManifest
    from trainer.model import fit, predict_proba

    manifest = BuildManifest.read(build_dir)
    splits = {
        name: pl.read_parquet(storage.join_uri(manifest.snapshot_uri, f"{name}.parquet"))
        for name in ("train", "valid", "test")
    }
    truth = pl.read_parquet(f"{folder}/truth.parquet").select(
        pl.col("client_ref").alias("entity_id"), pl.col("cutoff_ts").alias("snapshot_ts"), "p_true"
    )
    key = ["entity_id", "snapshot_ts"]
    test_truth = splits["test"].select(*key, "label").join(truth, on=key, how="left")
    results = {
        "split_rows": {name: frame.height for name, frame in splits.items()},
        "test_snapshots": sorted({str(d) for d in splits["test"]["snapshot_ts"].unique().to_list()}),
        "oracle_test_auc": auc(test_truth["p_true"].to_numpy(), test_truth["label"].to_numpy()),
    }
    sets = {"ours (inferred spec)": (None, manifest.feature_columns)}
    for name, path in json.loads(feature_sets).items():
        frame = pl.read_parquet(path).rename({"client_ref": "entity_id", "cutoff_ts": "snapshot_ts"})
        frame = frame.with_columns(pl.col("snapshot_ts").cast(splits["train"]["snapshot_ts"].dtype))
        sets[name] = (frame, [c for c in frame.columns if c not in key])
    for name, (frame, columns) in sets.items():
        parts = {}
        for split, rows in splits.items():
            joined = rows.select(*key, "label") if frame is not None else rows
            if frame is not None:
                joined = joined.join(frame, on=key, how="left")
                assert joined.height == rows.height, f"{name}: spine rows lost in the join"
            x = joined.select(pl.col(columns).cast(pl.Float32)).to_numpy()
            parts[split] = (x, joined["label"].cast(pl.Float32).to_numpy())
        names = [f"f{i}" for i in range(len(columns))]  # tools' feature names hold characters xgboost refuses
        booster = fit(
            parts["train"], parts["valid"], names, None, seed=42, log_every=10_000, label=name
        ).booster
        valid_auc, test_auc = (
            auc(np.asarray(predict_proba(booster, parts[split][0], names)), parts[split][1])
            for split in ("valid", "test")
        )
        results[name] = {
            "features": len(columns),
            "valid_auc": valid_auc,
            "test_auc": test_auc,
            "of_oracle": test_auc / results["oracle_test_auc"],
        }
    return results


def child(task: str, args: list[str]) -> dict:
    if task == "generate":
        return generate(int(args[0]), Path(args[1]))
    tasks = {"extract": extract, "build": build, "rfm": rfm, "quality": quality}
    return tasks[task](*args)


# ---------------------------------------------------------------------------------------------- parent

LOGS = Path("/tmp")


def measure(task: str, *args: str, timeout: float = 900) -> dict:
    command = [sys.executable, __file__, "--child", task, *args]
    return measure_command(command, LOGS / f"{task}-{time.time_ns()}.log", timeout)


def featuretools(folder: Path, out: Path, timeout: float) -> dict:
    command = [
        str(UV),
        "run",
        "--isolated",
        "--no-project",
        *FEATURETOOLS_ENV,
        "python",
        str(BENCH / "featuretools_dfs.py"),
        str(folder / "transactions.parquet"),
        str(folder / "spine.parquet"),
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # resolve the environment first (cached after the first run), so the timeout is the tool's own time
    measure_command([*command[:-4], "-c", "import featuretools"], LOGS / "featuretools-env.log", 900, env)
    return measure_command(command, LOGS / f"featuretools-{time.time_ns()}.log", timeout, env)


def markdown(report: dict) -> str:
    lines = [
        "# Retail churn: inferred-spec build vs featuretools DFS vs RFM",
        "",
        (
            f"Generated retail data (`features.synth_shapes`, shape `retail`, {CUTOFFS} monthly cutoffs, seed {SEED}); "
            f"{report['machine']}. Time is measured inside each child around the feature computation (imports "
            "and reading excluded for the tools; our build step includes reading the extract and writing the "
            "snapshot); peak memory is the child's own max RSS."
        ),
        "",
        (
            "| clients | transactions | spine rows | ours: s | ours: peak MiB | featuretools: s "
            "| featuretools: peak MiB | RFM: s | featuretools / ours: time | CPU time |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in report["sizes"]:
        ours, ft, r = size["ours"], size.get("featuretools", {}), size.get("rfm", {})
        fmt = lambda m, k, f: f.format(m[k]) if k in m else (m.get("error") or m.get("note") or "–")
        ratio = f"{size['speedup']:.0f}x" if "speedup" in size else "–"
        cpu = f"{size['cpu_ratio']:.0f}x" if "cpu_ratio" in size else "–"
        lines.append(
            f"| {size['clients']:,} | {size['transactions']:,} | {size['spine_rows']:,} | {fmt(ours, 'seconds', '{:.2f}')} "
            f"| {fmt(ours, 'peak_rss_mib', '{:,.0f}')} | {fmt(ft, 'seconds', '{:.1f}')} | {fmt(ft, 'peak_rss_mib', '{:,.0f}')} "
            f"| {fmt(r, 'seconds', '{:.2f}')} | {ratio} | {cpu} |"
        )
    q = report.get("quality")
    if q and "error" in q:
        lines += ["", f"Quality comparison failed: {q['error']}"]
    elif q:
        lines += [
            "",
            (
                f"Quality at {q['clients']:,} clients, same spine and time split (test = the latest cutoff, "
                f"{q['split_rows']['test']:,} rows; train {q['split_rows']['train']:,}, valid {q['split_rows']['valid']:,}), "
                f"same `trainer.model.fit` (default hyperparameters, seed 42). Oracle test AUC (the true churn "
                f"probabilities): {q['oracle_test_auc']:.4f}."
            ),
            "",
            "| features | count | valid AUC | test AUC | of oracle |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in ("ours (inferred spec)", "featuretools DFS", "RFM xgboost"):
            if name in q:
                m = q[name]
                lines.append(
                    f"| {name} | {m['features']} | {m['valid_auc']:.4f} | {m['test_auc']:.4f} | {m['of_oracle']:.3f} |"
                )
    lines += [
        "",
        (
            "Wall time is what a user waits; CPU time (every thread's, inside the child around the same work) "
            "is less sensitive to other work on a shared machine. featuretools runs on one core, our build on all."
        ),
        "",
        "| target | measured | met |",
        "|---|---:|---|",
    ]
    for target in report["targets"]:
        lines.append(f"| {target['name']} | {target['measured']} | {target['met']} |")
    lines += ["", *report.get("notes", []), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="2500,5000,10000", help="clients per run, comma-separated")
    parser.add_argument("--quality-size", type=int, default=5_000, help="clients of the AUC comparison")
    parser.add_argument("--workdir", default=".local/bench/retail")
    parser.add_argument("--timeout", type=float, default=600, help="featuretools' limit per size (seconds)")
    parser.add_argument(
        "--quality-timeout", type=float, default=1800, help="featuretools' limit at --quality-size (seconds)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of our build per size; the fastest counts"
    )
    parser.add_argument("--skip-featuretools", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.child[0], options.child[1:]), default=str))
        return

    global LOGS
    workdir = Path(options.workdir).resolve()
    run = workdir / f"run-{int(time.time())}"
    run.mkdir(parents=True)
    LOGS = run
    sizes = sorted({int(s) for s in options.sizes.split(",")} | {options.quality_size})
    report: dict = {"machine": machine(), "cutoffs": CUTOFFS, "seed": SEED, "sizes": [], "notes": []}
    featuretools_ok = not options.skip_featuretools
    for clients in sizes:
        print(f"== {clients:,} clients", flush=True)
        generated = measure("generate", str(clients), str(workdir))
        if "error" in generated:
            raise SystemExit(f"generation failed: {generated['error']}")
        folder = workdir / f"data-{clients}"
        here = run / str(clients)
        here.mkdir()
        size = {
            "clients": clients,
            "transactions": generated["rows"]["transactions"],
            "spine_rows": generated["rows"]["churn_at_cutoff"],
            "oracle": generated["oracle"],
        }
        extracted = measure("extract", str(folder), str(here / "extract"))
        if "error" in extracted:
            raise SystemExit(f"extract failed: {extracted['error']}")
        size["ours"] = best_of(
            options.repeat,
            lambda i, here=here: measure(
                "build", str(here / "extract"), str(here / f"build-{i}"), str(here / f"snapshots-{i}")
            ),
        )
        print(f"  ours: {size['ours']}", flush=True)
        size["rfm"] = measure("rfm", str(folder), str(here / "rfm.parquet"))
        is_quality = clients == options.quality_size
        if featuretools_ok or (is_quality and not options.skip_featuretools):
            # the AUC comparison needs featuretools' features even past the speed limit: a longer one there
            limit = max(options.timeout, options.quality_timeout) if is_quality else options.timeout
            size["featuretools"] = featuretools(folder, here / "featuretools.parquet", limit)
            print(f"  featuretools: {size['featuretools']}", flush=True)
            finished = size["featuretools"].get("seconds")
            if finished is None or finished > options.timeout:
                featuretools_ok = False  # larger sizes would only take longer
                size["featuretools"]["within_limit"] = False
        elif not options.skip_featuretools:
            size["featuretools"] = {"note": f"not run: past {options.timeout:.0f} s at a smaller size"}
        if (
            "seconds" in size["ours"]
            and size.get("featuretools", {}).get("seconds", float("inf")) <= options.timeout
        ):
            size["speedup"] = size["featuretools"]["seconds"] / size["ours"]["seconds"]
            # CPU time is less sensitive to other work on a shared machine than wall time
            size["cpu_ratio"] = size["featuretools"]["cpu_seconds"] / size["ours"]["cpu_seconds"]
        if is_quality and "seconds" in size["ours"]:
            sets = {"RFM xgboost": str(here / "rfm.parquet")}
            if "seconds" in size.get("featuretools", {}):
                sets["featuretools DFS"] = str(here / "featuretools.parquet")
            quality_run = measure("quality", str(here / "build-0"), str(folder), json.dumps(sets))
            report["quality"] = {"clients": clients, **quality_run}
            print(f"  quality: {quality_run}", flush=True)
        report["sizes"].append(size)

    targets = []
    finished = [s for s in report["sizes"] if "speedup" in s]
    if finished:
        largest = finished[-1]
        targets.append(
            {
                "name": f"ours >= {TARGET_SPEEDUP:.0f}x featuretools at the largest size it finished "
                f"({largest['clients']:,} clients)",
                "measured": f"{largest['speedup']:.0f}x",
                "met": largest["speedup"] >= TARGET_SPEEDUP,
            }
        )
    q = report.get("quality", {})
    ours = q.get("ours (inferred spec)", {}).get("test_auc")
    for name, relation in (("featuretools DFS", ">="), ("RFM xgboost", ">")):
        other = q.get(name, {}).get("test_auc")
        if ours is not None and other is not None:
            met = ours >= other if relation == ">=" else ours > other
            targets.append(
                {
                    "name": f"test AUC: ours {relation} {name}",
                    "measured": f"{ours:.4f} vs {other:.4f}",
                    "met": met,
                }
            )
    if finished and finished[-1] is report["sizes"][-1]:
        report["notes"].append(
            f"featuretools finished every size, the largest ({finished[-1]['clients']:,} clients) in "
            f"{finished[-1]['featuretools']['seconds']:.0f} s: the size where it passes {options.timeout:.0f} s "
            "is larger (add it to --sizes); its time grows with the data, ours far less, so the ratio there is "
            "higher still."
        )
    report["targets"] = targets
    write_results("retail", report, markdown(report))


if __name__ == "__main__":
    main()

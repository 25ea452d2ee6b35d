"""Scale benchmark: the training pipeline's steps at 10 M and 50 M events, wall time and peak memory per step.

    .venv/bin/python bench/bench_scale.py [--customers 250000,1250000] [--workdir .local/bench-scale]
                                          [--steps seed,extract,validate-raw,build,trial] [--max-rounds 200]
                                          [--extracts DIR,DIR]  (existing extracts: from validate-raw on)

For each size (customers x 40 events: 10 M and 50 M events by default, ``make bench-scale SCALE_CUSTOMERS=...``):

1. ``python -m features seed --customers N --events-per-customer 40`` into its own SQLite warehouse under
   ``--workdir``; a warehouse seeded completely before (its seed manifest exists) is reused, and the figures
   of the run that seeded it are reported again (marked reused).
2. The pipeline's steps, each the real CLI in its own process, as the DAG runs them: ``features extract``
   (warehouse -> parquet parts), ``features validate-raw`` (gate 1), ``features build`` (point-in-time
   features, split; always a fresh snapshot root) and one ``trainer trial`` (trial 0 of 4, ``--max-rounds``).

Each step's wall time, CPU time (user + system) and peak RSS (the process's own, ``os.wait4``) are recorded
with the load average at its start and end: the machine may be shared, and CPU time is what load changes
least. Each step runs at every size one right after the other, so their ratios are measured side by side under
about the same load; the results are rewritten after every step.
Results: ``bench/results/scale.json`` and ``bench/results/scale.md``. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import machine, write_results

ROOT = Path(__file__).resolve().parent.parent
EVENTS_PER_CUSTOMER = 40
STEPS = ("seed", "extract", "validate-raw", "build", "trial")
# issue 11: the build at 50 M events in < 3 GiB and <= 6x its time at 10 M
TARGET_BUILD_RSS_GIB = 3.0
TARGET_BUILD_RATIO = 6.0


def run_step(name: str, command: list[str], log_path: Path, env: dict[str, str], timeout: float) -> dict:
    """Run one step's CLI (output to ``log_path``); its wall, CPU seconds, own peak RSS and the load."""
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    result = {
        "step": name,
        "command": " ".join(command[1:] if command[0] == sys.executable else command),
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "exit_code": code,
        "log": str(log_path),
    }
    if code != 0:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        result["error"] = (lines[-1][:300] if lines else "") or f"exit code {code}"
    print(f"  {name}: {result['wall_seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU, "
          f"{result['peak_rss_mib']:,.0f} MiB peak RSS, load {load_start:.1f}"
          + (f"  FAILED: {result['error']}" if code else ""), flush=True)
    return result


class Size:
    """One size's warehouse, run directory and step commands."""

    def __init__(self, customers: int, workdir: Path, max_rounds: int, extract: Path | None = None):
        python = sys.executable
        self.customers = customers
        self.seed_dir = workdir / f"seed-{customers}"
        self.warehouse = workdir / f"warehouse-{customers}.db"
        self.run = workdir / f"run-{customers}-{int(time.time())}"
        self.run.mkdir(parents=True)
        self.env = {**os.environ, "WAREHOUSE_URI": f"sqlite:///{self.warehouse}", "PYTHONUNBUFFERED": "1"}
        self.env.pop("STEP_OUTPUT_URI", None)
        run = self.run
        if extract is not None:  # an extract made beforehand (seed and extract are not run)
            (run / "extract").symlink_to(extract.resolve(), target_is_directory=True)
        self.commands = {
            "seed": [python, "-m", "features", "seed", "--customers", str(customers),
                     "--events-per-customer", str(EVENTS_PER_CUSTOMER), "--out", str(self.seed_dir)],
            "extract": [python, "-m", "features", "extract", "--out", str(run / "extract")],
            "validate-raw": [python, "-m", "features", "validate-raw", "--extract", str(run / "extract"),
                             "--out", str(run / "validate-raw")],
            "build": [python, "-m", "features", "build", "--extract", str(run / "extract"),
                      "--snapshot-root", str(run / "snapshots"), "--out", str(run / "build")],
            "trial": [python, "-m", "trainer", "trial", "--features", str(run / "build"), "--trial-index", "0",
                      "--n-trials", "4", "--seed", "42", "--max-rounds", str(max_rounds), "--out", str(run / "trial")],
        }
        self.result: dict = {"customers": customers, "run": str(run), "steps": {}}
        if extract is not None:
            self.result["extract"] = str(extract.resolve())
        self.failed = False

    def step(self, step: str, timeout: float) -> None:
        if self.failed:
            return
        if step == "seed":
            measured = self.seed_dir / "measured.json"
            if (self.seed_dir / "manifest.json").exists() and measured.exists():
                self.result["steps"][step] = {**json.loads(measured.read_text()), "reused": True}
                print(f"  seed {self.customers:,}: reusing {self.warehouse} (seeded before)", flush=True)
                return
            shutil.rmtree(self.seed_dir, ignore_errors=True)
            self.warehouse.unlink(missing_ok=True)
        print(f"{step}, {self.customers:,} customers ({self.run})", flush=True)
        outcome = run_step(step, self.commands[step], self.run / f"{step}.log", self.env, timeout)
        self.result["steps"][step] = outcome
        if step == "seed" and "error" not in outcome:
            (self.seed_dir / "measured.json").write_text(json.dumps(outcome, indent=2) + "\n")
        self.failed = "error" in outcome
        for name in ("extract", "build"):
            path = self.run / name / "manifest.json"
            if path.exists():
                manifest = json.loads(path.read_text())
                self.result[f"{name}_rows"] = manifest.get("rows", {})
                if name == "build":
                    self.result["features"] = len(manifest.get("feature_columns", []))


def markdown(report: dict) -> str:
    sizes = report["sizes"]
    lines = [
        "# Scale benchmark: the pipeline's steps at two sizes, side by side",
        "",
        f"{report['machine']}; {report['note']}",
        "",
    ]
    for size in sizes:
        events = size.get("extract_rows", {}).get("events")
        labels = size.get("build_rows")
        label_rows = sum(labels.values()) if labels else None
        lines += [
            f"## {size['customers']:,} customers" + (f": {events:,} events" if events else "")
            + (f", {label_rows:,} label rows" if label_rows else "")
            + (f" x {size['features']} features" if size.get("features") else ""),
            "",
            "| step | wall | CPU seconds | peak RSS (GiB) | load avg start / end | note |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for step, m in size["steps"].items():
            minutes, seconds = divmod(m["wall_seconds"], 60)
            note = m.get("error") or ("reused: seeded by an earlier run" if m.get("reused") else "")
            lines.append(
                f"| {step} | {int(minutes)}:{seconds:04.1f} | {m['cpu_seconds']:.1f} | {m['peak_rss_mib'] / 1024:.2f} "
                f"| {m['load_average_start']} / {m['load_average_end']} | {note} |"
            )
        lines.append("")
    if report.get("ratios"):
        small, large = sizes[0]["customers"], sizes[-1]["customers"]
        lines += [
            (f"## Largest over smallest size ({large:,} vs {small:,} customers: "
             f"{report['data_ratio']:.2f}x the events)"),
            "",
            "| step | wall ratio | CPU ratio | peak RSS ratio |",
            "|---|---:|---:|---:|",
        ]
        for step, r in report["ratios"].items():
            lines.append(f"| {step} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['rss']:.2f} |")
        lines.append("")
    if report.get("targets"):
        lines += ["| target | measured | met |", "|---|---:|---|"]
        for target in report["targets"]:
            lines.append(f"| {target['name']} | {target['measured']} | {target['met']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", default=os.environ.get("SCALE_CUSTOMERS") or "250000,1250000",
                        help="comma-separated sizes in customers (x 40 events each; env SCALE_CUSTOMERS)")
    parser.add_argument("--workdir", default=str(ROOT / ".local" / "bench-scale"))
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, in order: {','.join(STEPS)}")
    parser.add_argument("--max-rounds", type=int, default=200, help="boosting rounds of the trial")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    parser.add_argument("--name", default="scale", help="results file name under bench/results/")
    parser.add_argument("--extracts", default="",
                        help="comma-separated extract directories made beforehand (e.g. bench_features.py's): "
                        "their steps from validate-raw on, instead of seeding and extracting")
    options = parser.parse_args()
    extracts = [Path(e) for e in options.extracts.split(",") if e.strip()]
    if extracts:
        sizes_of = {json.loads((e / "manifest.json").read_text())["rows"]["entities"]: e for e in extracts}
        sizes = sorted(sizes_of)
    else:
        sizes_of = {}
        sizes = sorted(int(c) for c in options.customers.split(",") if c.strip())
    steps = [s for s in options.steps.split(",") if s and not (extracts and s in ("seed", "extract"))]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"--steps: unknown step(s) {unknown}; choose from {', '.join(STEPS)}")
    workdir = Path(options.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report: dict = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "nice": os.nice(0),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "order": "step by step: each step runs at every size, one right after the other (same machine load)",
    }
    runs = [Size(c, workdir, options.max_rounds, sizes_of.get(c)) for c in sizes]
    if extracts:
        report["order"] += "; from extracts made beforehand: " + ", ".join(str(e) for e in extracts)
    for step in steps:
        for size in runs:
            size.step(step, options.timeout)
        # the results so far, after every step (a long run that is stopped still leaves its figures)
        report["sizes"] = [size.result for size in runs]
        report["seconds"] = round(time.time() - started, 1)
        summarise(report, steps)
        write_results(options.name, report, markdown(report))


def summarise(report: dict, steps: list[str]) -> None:
    """The note on the machine, the ratios largest / smallest size, and the targets, into ``report``."""
    report["note"] = (
        f"run at nice {report['nice']} on a shared machine (load average at start "
        f"{report['load_average_at_start'][0]}, per step below): wall times are stretched by the other work, "
        "CPU seconds much less; each step is its own process, peak RSS its own maximum resident set; "
        f"{report['order']}."
    )
    first, last = report["sizes"][0], report["sizes"][-1]
    if len(report["sizes"]) < 2:
        return
    report["data_ratio"] = last["customers"] / first["customers"]
    ratios = {}
    for step in steps:
        a, b = first["steps"].get(step), last["steps"].get(step)
        if a and b and "error" not in a and "error" not in b:
            ratios[step] = {"wall": b["wall_seconds"] / a["wall_seconds"],
                            "cpu": b["cpu_seconds"] / max(a["cpu_seconds"], 1e-9),
                            "rss": b["peak_rss_mib"] / a["peak_rss_mib"]}
    report["ratios"] = ratios
    build = last["steps"].get("build", {})
    targets = []
    if "peak_rss_mib" in build and "error" not in build:
        rss = build["peak_rss_mib"] / 1024
        targets.append({"name": f"build peak RSS at the largest size < {TARGET_BUILD_RSS_GIB:g} GiB",
                        "measured": f"{rss:.2f} GiB", "met": rss < TARGET_BUILD_RSS_GIB})
    if "build" in ratios:
        wall, cpu = ratios["build"]["wall"], ratios["build"]["cpu"]
        targets.append({"name": f"build time at the largest size <= {TARGET_BUILD_RATIO:g}x the smallest's "
                                f"({report['data_ratio']:.0f}x the events)",
                        "measured": f"{wall:.2f}x wall, {cpu:.2f}x CPU",
                        "met": wall <= TARGET_BUILD_RATIO and cpu <= TARGET_BUILD_RATIO})
    report["targets"] = targets

if __name__ == "__main__":
    main()

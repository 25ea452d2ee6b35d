"""Orchestration share of a demo run: `make run`'s DAG wall time minus the time its steps computed.

Runs `make run` once with its own MLPLATFORM_HOME (a fresh warehouse, Airflow DB and MLflow store under
``--workdir``), or reads the task log of a run already made (``--log``). Every step process ends with
``<command> done in S s (process start-up P s)`` (``mlcontract.cli.run``): S is the step's compute, P the
seconds from process start to the command (interpreter, imports, parsing). The DAG's wall time is Airflow's
``run_duration``. Orchestration = wall - sum(S): step start-up, Airflow scheduling and its own tasks.

    .venv/bin/python bench/bench_demo.py                    # one make run (about a minute on a quiet machine)
    .venv/bin/python bench/bench_demo.py --log .local/airflow/dags-test.log
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_DONE = re.compile(r"INFO (?P<prog>features|trainer): (?P<command>[\w-]+) done in (?P<seconds>[\d.]+)s "
                       r"\(process start-up (?P<startup>[\d.]+s|unknown)\)")
RUN_FINISHED = re.compile(r"DagRun Finished: .*?run_duration=(?P<seconds>[\d.]+), state=(?P<state>\w+)")


def parse_log(text: str) -> dict:
    """Step compute and start-up seconds and the DAG's wall time from a `airflow dags test` task log."""
    steps = []
    for match in STEP_DONE.finditer(text):
        startup = match["startup"]
        steps.append({"step": f"{match['prog']} {match['command']}", "compute_s": float(match["seconds"]),
                      "startup_s": None if startup == "unknown" else float(startup.rstrip("s"))})
    finished = RUN_FINISHED.findall(text)
    if not finished:
        raise SystemExit("no 'DagRun Finished' line in the log: the run did not finish")
    wall, state = float(finished[-1][0]), finished[-1][1]
    compute = sum(step["compute_s"] for step in steps)
    startup = sum(step["startup_s"] or 0.0 for step in steps)
    return {
        "state": state, "wall_s": round(wall, 2), "steps": steps, "step_processes": len(steps),
        "step_compute_s": round(compute, 2), "step_startup_s": round(startup, 2),
        "orchestration_s": round(wall - compute, 2),
        "orchestration_share": round((wall - compute) / wall, 3) if wall else None,
    }


def make_run(workdir: Path) -> tuple[str, float]:
    """One `make run` under ``workdir`` (its own platform home); returns (task log, make's wall seconds)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.perf_counter()
    done = subprocess.run(["make", "-C", str(ROOT), "run", f"MLPLATFORM_HOME={workdir}"], check=False,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log = workdir / "airflow" / "dags-test.log"
    if done.returncode != 0:
        raise SystemExit(f"make run failed ({done.returncode}); task log: {log}\n{done.stdout[-2000:]}")
    return log.read_text(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, help="the task log of a finished run instead of a new make run")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".local" / "bench-demo")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    if args.log:
        text, make_seconds = args.log.read_text(), None
    else:
        text, make_seconds = make_run(args.workdir)
    result = {**parse_log(text), "make_run_s": None if make_seconds is None else round(make_seconds, 1),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "machine": platform.platform(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {s['step']} | {s['compute_s']:.2f} | {s['startup_s']} |" for s in result["steps"])
    print(f"| step | compute s | start-up s |\n|---|---:|---:|\n{rows}\n\n"
          f"DAG wall {result['wall_s']} s ({result['state']}), steps computed {result['step_compute_s']} s in "
          f"{result['step_processes']} processes (their start-up {result['step_startup_s']} s): orchestration "
          f"{result['orchestration_s']} s = {100 * (result['orchestration_share'] or 0):.0f} % of the run; "
          f"load average {result['load_average_before']} -> {result['load_average_after']}")


if __name__ == "__main__":
    main()

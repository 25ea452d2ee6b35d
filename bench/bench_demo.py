"""Orchestration share of a demo run: `make run`'s DAG wall time minus the time its steps computed.

Runs `make run` once with its own MLPLATFORM_HOME (a fresh warehouse, Airflow DB and MLflow store under
``--workdir``), or reads the task log of a run already made (``--log``). Every step process ends with
``<command> done in S s (process start-up P s)`` (``mlcontract.cli.run``): S is the step's compute, P the
seconds from process start to the command (interpreter, imports, parsing). The DAG's wall time is Airflow's
``run_duration``. Orchestration = wall - sum(S): step start-up, Airflow scheduling and its own tasks.
Also recorded: each task's wall as `airflow dags test` ran it, and what the heavy imports cost in a fresh
interpreter (GX in each gate, xgboost in each trial, MLflow in the MLflow steps): the floor under the steps.
Writes ``--out`` (JSON) and the same tables beside it as Markdown.

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
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_PATHS = ("images/trainer/src", "images/features/src", "contract/src")
STEP_DONE = re.compile(r"INFO (?P<prog>features|trainer): (?P<command>[\w-]+) done in (?P<seconds>[\d.]+)s "
                       r"\(process start-up (?P<startup>[\d.]+s|unknown)\)")
RUN_FINISHED = re.compile(r"DagRun Finished: .*?run_duration=(?P<seconds>[\d.]+), state=(?P<state>\w+)")
TASK_EDGE = re.compile(r"^(?P<at>\S+?)Z? .*\[DAG TEST\] (?P<edge>starting|end) (?:task )?task_id=(?P<task>\S+) "
                       r"map_index=(?P<index>\S+)", re.MULTILINE)
# What a step process pays before its own work, per library (fresh interpreter, the fastest of REPEAT):
# the floor under the gates (GX), the trials (xgboost, as `trainer trial` imports it) and the MLflow steps.
IMPORTS = {
    "great_expectations": "import great_expectations.expectations",
    "xgboost (trial)": "from trainer.cli import import_xgboost_alone; import_xgboost_alone()",
    "xgboost with scikit-learn": "import xgboost",
    "mlflow": "import mlflow",
}
REPEAT = 2


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


def task_walls(text: str) -> list[dict]:
    """Each task's wall seconds as `airflow dags test` ran them (one at a time): its step, if any, and
    Airflow's own work around it (rendering, XCom, state updates; the first task also starts the in-process
    execution API)."""
    started: dict[tuple[str, str], datetime] = {}
    walls = []
    for match in TASK_EDGE.finditer(text):
        key, at = (match["task"], match["index"]), datetime.fromisoformat(match["at"])
        if match["edge"] == "starting":
            started[key] = at
        elif key in started:
            walls.append({"task": key[0] if key[1] == "-1" else f"{key[0]}[{key[1]}]",
                          "wall_s": round((at - started.pop(key)).total_seconds(), 2)})
    return walls


def import_seconds() -> dict[str, float]:
    """Wall seconds of each import in :data:`IMPORTS` in a fresh interpreter (the fastest of REPEAT)."""
    python = ROOT / ".venv" / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in IMPORT_PATHS)}
    seconds = {}
    for name, statement in IMPORTS.items():
        runs = []
        for _ in range(REPEAT):
            started = time.perf_counter()
            subprocess.run([str(python), "-c", statement], check=True, env=env, capture_output=True)
            runs.append(time.perf_counter() - started)
        seconds[name] = round(min(runs), 2)
    return seconds


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
    result = {**parse_log(text), "tasks": task_walls(text), "imports_s": import_seconds(), "make_run_s": None if make_seconds is None else round(make_seconds, 1),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "machine": platform.platform(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def markdown(result: dict) -> str:
    steps = "\n".join(f"| {s['step']} | {s['compute_s']:.2f} | {s['startup_s']} |" for s in result["steps"])
    tasks = "\n".join(f"| {t['task']} | {t['wall_s']:.1f} |" for t in result["tasks"])
    imports = "\n".join(f"| {name} | {seconds:.2f} |" for name, seconds in result["imports_s"].items())
    return (
        f"# Demo benchmark: `make run`'s DAG, where its time goes\n\n"
        f"{result['cpus']} CPUs, {result['machine']}; load average {result['load_average_before']} before, "
        f"{result['load_average_after']} after. `make run` took {result['make_run_s']} s in all (environment "
        f"checks, seeding, Airflow DB, the DAG).\n\n"
        f"**DAG wall {result['wall_s']} s** ({result['state']}); the steps computed {result['step_compute_s']} s "
        f"in {result['step_processes']} processes (their start-up {result['step_startup_s']} s): orchestration "
        f"{result['orchestration_s']} s = {100 * (result['orchestration_share'] or 0):.0f} % of the run.\n\n"
        f"| step | compute s | start-up s |\n|---|---:|---:|\n{steps}\n\n"
        f"| task (as `airflow dags test` ran it) | wall s |\n|---|---:|\n{tasks}\n\n"
        f"| import in a fresh process | s |\n|---|---:|\n{imports}\n"
    )

if __name__ == "__main__":
    main()

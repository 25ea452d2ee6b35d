"""Measuring a benchmark task: a fresh child process, its wall and CPU time and its own peak memory.

Each figure belongs to one task only: the child's peak RSS comes from ``os.wait4`` (the parent stays small,
since a child's peak RSS starts from its parent's), the load average at its start says how busy the
machine was, and the task's own JSON result is the last line of its stdout starting with ``{``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def measure_command(
    command: list[str], log_path: Path, timeout: float = 900, env: dict | None = None
) -> dict:
    """Run ``command``; its stderr goes to ``log_path``. Adds process seconds, CPU seconds, peak RSS (MiB)
    and the load average at start to the child's JSON result, or an ``error``."""
    load = round(os.getloadavg()[0], 2)  # other work on the machine skews the timings: record it
    started = time.perf_counter()
    with open(log_path, "w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                return {
                    "error": f"timed out after {timeout:.0f} s",
                    "timed_out": True,
                    "peak_rss_mib": usage.ru_maxrss / 1024,
                    "load_average_at_start": load,
                }
            time.sleep(0.05)
    output = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {
        "process_seconds": time.perf_counter() - started,
        "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "load_average_at_start": load,
    }
    if proc.returncode != 0:
        tail = [line for line in log_path.read_text().splitlines() if line.strip()][-1:] or [""]
        return {**result, "error": f"exit code {proc.returncode}: {tail[0][:300]} (log: {log_path})"}
    lines = [line for line in output.splitlines() if line.startswith("{")]
    return {**result, **(json.loads(lines[-1]) if lines else {})}


def best_of(repeat: int, run_once: Callable[[int], dict]) -> dict:
    """The fastest of ``repeat`` runs (other work on a shared machine only ever slows a run down)."""
    runs = [run_once(i) for i in range(max(repeat, 1))]
    ok = [r for r in runs if "seconds" in r]
    best = dict(min(ok, key=lambda r: r["seconds"]) if ok else runs[0])
    best["all_runs_seconds"] = [round(r["seconds"], 2) for r in ok]
    return best


def machine() -> str:
    import platform

    return f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}"


def write_results(name: str, report: dict, markdown: str) -> None:
    """``bench/results/{name}.json`` (every figure) and ``{name}.md`` (the tables); prints the tables."""
    import json

    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (results / f"{name}.md").write_text(markdown)
    print(markdown)

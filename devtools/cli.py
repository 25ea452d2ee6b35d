"""Developer commands behind the Makefile: `summary`, `ui`, `serve`, `request`.

Run as ``python -m devtools.cli <command>`` with the Makefile's environment (embedded defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlcontract import layout, storage
from mlcontract.names import CHALLENGER, CHAMPION
from mlcontract.registry import model_uri
from mlcontract.rules import PROMOTE
from mlplatform.deployment import read_deployment
from mlplatform.settings import load_settings

DAG_ID = "ml_model_training"


def oracle_auc(warehouse_uri: str) -> float | None:
    """The best test AUC any model could reach: the generator's oracle on the latest (test) snapshot."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(warehouse_uri)
        with engine.connect() as connection:
            rows = dict(connection.execute(sa.text("SELECT key, value FROM dataset_meta")).all())
    except sa.exc.SQLAlchemyError:  # a user's own warehouse has no generator metadata
        return None
    by_snapshot = json.loads(rows.get("oracle_auc_by_snapshot") or "{}")
    if by_snapshot:
        return float(by_snapshot[max(by_snapshot)])
    return float(rows["oracle_auc"]) if "oracle_auc" in rows else None


# the test metrics a run reports, per task (binary, multiclass, regression); those the run has are shown
SUMMARY_METRICS = ("test_auc", "test_pr_auc", "test_log_loss", "test_brier", "valid_auc", "test_accuracy",
                   "test_macro_f1", "test_rmse", "test_mae", "test_r2")


def summary(_: argparse.Namespace) -> int:
    settings = load_settings()
    uri = layout.latest_summary_uri(settings.artifact_root, DAG_ID)
    if not storage.exists(uri):
        print(f"no finished training run yet ({uri} is missing): run `make run`")
        return 1
    run = storage.read_json(uri)
    decision, model, best = run["decision"], run["model"], run["best_trial"]
    metrics = model.get("metrics") or {}
    oracle = oracle_auc(os.environ.get("WAREHOUSE_URI", f"sqlite:///{settings.home / 'warehouse.db'}"))
    test_auc = metrics.get("test_auc")
    lines = [
        f"run            {run['dag_id']} / {run['run_id']}",
        "rows           extracted " + ", ".join(f"{k} {v:,}" for k, v in (run["rows"]["extracted"] or {}).items())
        + "; features " + ", ".join(f"{k} {v:,}" for k, v in (run["rows"]["features"] or {}).items()),
        "gates          " + "  ".join(
            f"{name}: {'passed' if gate['success'] else 'FAILED'}" for name, gate in run["gates"].items()
        ),
        f"snapshot       {run['snapshot']['hash'][:12]}… ({'reused' if run['snapshot']['reused'] else 'built'})",
        f"best trial     #{best['trial']} valid {best.get('metric', 'auc')} "
        f"{best.get('valid_metric', best.get('valid_auc')):.4f} params {json.dumps(best['params'])}",
        "metrics        " + "  ".join(f"{k} {metrics[k]:.4f}" for k in SUMMARY_METRICS if k in metrics),
    ]
    if oracle and test_auc:
        lines.append(
            f"vs oracle      test AUC {test_auc:.4f} / generator's oracle AUC {oracle:.4f} = {test_auc / oracle:.3f}"
        )
    lines += [
        f"decision       {'PROMOTED' if decision['action'] == PROMOTE else 'rejected'}: {decision['reason']}",
        f"model          {model['uri']}  (champion is now version {run['champion_version']})",
        "look next      make ui (Airflow http://localhost:8080, MLflow http://localhost:5000), make serve,",
        f"               artifacts {run['artifacts']}",
    ]
    print("\n".join(lines))
    return 0


def _interrupt_on_sigterm() -> None:
    """Stop the servers on SIGTERM too (not only Ctrl-C), so nothing is left running."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _supervise(processes: list[subprocess.Popen]) -> None:
    """Wait until one server exits or the user interrupts, then stop them all."""
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(processes)


def _stop(processes: list[subprocess.Popen]) -> None:
    # `airflow standalone` leaves children behind on SIGTERM: stop each whole process group.
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def ui(args: argparse.Namespace) -> int:
    settings = load_settings()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           "AIRFLOW__API__PORT": str(args.airflow_port), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           # Task processes report to the execution API of this API server, wherever its port is.
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{args.airflow_port}/execution/"}
    mlflow_cmd = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", settings.mlflow_tracking_uri,
                  "--port", str(args.mlflow_port), "--host", "127.0.0.1"]
    _interrupt_on_sigterm()
    processes = [
        subprocess.Popen([str(bin_dir / "airflow"), "standalone"], env=env, start_new_session=True),
        subprocess.Popen(mlflow_cmd, env=env, start_new_session=True),
    ]
    print(f"Airflow UI http://localhost:{args.airflow_port} (admin password: "
          f"{os.environ.get('AIRFLOW_HOME', '')}/simple_auth_manager_passwords.json.generated), "
          f"MLflow UI http://localhost:{args.mlflow_port}. Ctrl-C stops both.", flush=True)
    _supervise(processes)
    return 0


def serve(args: argparse.Namespace) -> int:
    """MLflow model server for the deployed champion, plus one for the challenger during an A/B test."""
    settings = load_settings()
    record = read_deployment(settings.artifact_root, settings.registered_model_name)
    if record is None:
        print("nothing deployed yet: run `make run` first")
        return 1
    servers = {CHAMPION: (record.model_uri, args.port)}
    if record.ab_test:
        servers[CHALLENGER] = (model_uri(record.model_name, record.challenger_version), args.port + 1)
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    _interrupt_on_sigterm()
    processes = []
    for alias, (served_uri, port) in servers.items():
        print(f"serving {served_uri} ({alias}) on http://127.0.0.1:{port}/invocations", flush=True)
        command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", served_uri,
                   "--port", str(port), "--host", "127.0.0.1", "--env-manager", "local"]
        processes.append(subprocess.Popen(command, env=env, start_new_session=True))
    if record.ab_test:
        print(f"A/B test: the challenger takes {record.challenger_share:.0%} of the traffic "
              "(batch prediction routes entities by a stable hash)", flush=True)
    _supervise(processes)
    return max((process.returncode or 0) for process in processes)


def request(args: argparse.Namespace) -> int:
    """A body for `make serve`'s /invocations: real feature rows, the deployed champion's logged input example."""
    import mlflow

    settings = load_settings()
    record = read_deployment(settings.artifact_root, settings.registered_model_name)
    if record is None:
        print("nothing deployed yet: run `make run` first", file=sys.stderr)
        return 1
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    # MLflow stores the input example with the model as a ready serving payload (dataframe_split)
    body = json.loads(Path(mlflow.artifacts.download_artifacts(f"{record.model_uri}/serving_input_example.json"))
                      .read_text())
    body["dataframe_split"]["data"] = body["dataframe_split"]["data"][: args.rows]
    print(json.dumps(body))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help="print the latest training run's summary").set_defaults(func=summary)
    ui_parser = commands.add_parser("ui", help="Airflow standalone + MLflow UI")
    ui_parser.add_argument("--airflow-port", type=int, default=8080)
    ui_parser.add_argument("--mlflow-port", type=int, default=5000)
    ui_parser.set_defaults(func=ui)
    serve_parser = commands.add_parser("serve", help="MLflow model server for a deployed alias")
    serve_parser.add_argument("--port", type=int, default=5001, help="champion port; the challenger gets port+1")
    serve_parser.set_defaults(func=serve)
    request_parser = commands.add_parser("request", help="print an /invocations body: the champion's example rows")
    request_parser.add_argument("--rows", type=int, default=1)
    request_parser.set_defaults(func=request)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

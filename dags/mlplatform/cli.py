"""Developer commands behind the Makefile: `summary`, `ui`, `serve`.

Run as ``python -m mlplatform.cli <command>`` with the Makefile's environment (embedded defaults).
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

from mlplatform.settings import load_settings, local_home

DAG_ID = "ml_model_training"


def _oracle_auc(warehouse_uri: str) -> float | None:
    """The data generator records the best AUC any model could reach on the labels it drew."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(warehouse_uri)
        with engine.connect() as connection:
            rows = dict(connection.execute(sa.text("SELECT key, value FROM dataset_meta")).all())
    except Exception:  # a user's own warehouse has no generator metadata
        return None
    for key in ("oracle_auc_test", "oracle_auc_last_snapshot", "oracle_auc"):
        if key in rows:
            return float(rows[key])
    return None


def summary(_: argparse.Namespace) -> int:
    from features import io

    from mlplatform.report import latest_summary_uri

    settings = load_settings()
    uri = latest_summary_uri(settings.artifact_root, DAG_ID)
    if not io.exists(uri):
        print(f"no finished training run yet ({uri} is missing): run `make run`")
        return 1
    run = io.read_json(uri)
    decision, model, best = run["decision"], run["model"], run["best_trial"]
    metrics = model.get("metrics") or {}
    oracle = _oracle_auc(os.environ.get("WAREHOUSE_URI", f"sqlite:///{local_home() / 'warehouse.db'}"))
    test_auc = metrics.get("test_auc")
    lines = [
        f"run            {run['dag_id']} / {run['run_id']}",
        f"rows           extracted {run['rows']['extracted']}  features {run['rows']['features']}",
        "gates          " + "  ".join(
            f"{name}: {'passed' if gate['success'] else 'FAILED'}" for name, gate in run["gates"].items()
        ),
        f"snapshot       {run['snapshot']['hash'][:12]}… ({'reused' if run['snapshot']['reused'] else 'built'})",
        f"best trial     #{best['trial']} valid AUC {best['valid_auc']:.4f} params {json.dumps(best['params'])}",
        f"metrics        " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float)),
    ]
    if oracle and test_auc:
        lines.append(f"vs oracle      test AUC {test_auc:.4f} / oracle AUC {oracle:.4f} = {test_auc / oracle:.3f}")
    lines += [
        f"decision       {'PROMOTED' if decision['promote'] else 'rejected'}: {decision['reason']}",
        f"model          {model['uri']}  (champion is now version {run['champion_version']})",
        "look next      make ui (Airflow http://localhost:8080, MLflow http://localhost:5000), make serve,",
        f"               artifacts {run['artifacts']}",
    ]
    print("\n".join(lines))
    return 0


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
           "AIRFLOW__API__PORT": str(args.airflow_port)}
    mlflow_cmd = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", settings.mlflow_tracking_uri,
                  "--port", str(args.mlflow_port), "--host", "127.0.0.1"]
    processes = [
        subprocess.Popen([str(bin_dir / "airflow"), "standalone"], env=env, start_new_session=True),
        subprocess.Popen(mlflow_cmd, env=env, start_new_session=True),
    ]
    print(f"Airflow UI http://localhost:{args.airflow_port} (admin password: "
          f"{os.environ.get('AIRFLOW_HOME', '')}/simple_auth_manager_passwords.json.generated), "
          f"MLflow UI http://localhost:{args.mlflow_port}. Ctrl-C stops both.", flush=True)
    try:
        while all(process.poll() is None for process in processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(processes)
    return 0


def serve(args: argparse.Namespace) -> int:
    from mlplatform.deployment import read_deployment

    settings = load_settings()
    try:
        record = read_deployment(settings.artifact_root, settings.registered_model_name, args.alias)
    except FileNotFoundError:
        print(f"nothing deployed as {args.alias!r} yet: run `make run` first")
        return 1
    print(f"serving {record['model_uri']} ({args.alias}) on http://127.0.0.1:{args.port}/invocations", flush=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", record["model_uri"],
               "--port", str(args.port), "--host", "127.0.0.1", "--env-manager", "local"]
    return subprocess.call(command, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlplatform.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("summary", help="print the latest training run's summary").set_defaults(func=summary)
    ui_parser = commands.add_parser("ui", help="Airflow standalone + MLflow UI")
    ui_parser.add_argument("--airflow-port", type=int, default=8080)
    ui_parser.add_argument("--mlflow-port", type=int, default=5000)
    ui_parser.set_defaults(func=ui)
    serve_parser = commands.add_parser("serve", help="MLflow model server for a deployed alias")
    serve_parser.add_argument("--port", type=int, default=5001)
    serve_parser.add_argument("--alias", default="champion", choices=["champion", "challenger"])
    serve_parser.set_defaults(func=serve)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

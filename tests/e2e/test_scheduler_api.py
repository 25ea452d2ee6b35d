"""What a user does from the UI, done through the same REST API: the real scheduler (standalone Airflow) runs
a manually triggered training run with Params; the `gpu_pool` the trainer steps need exists."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from e2e_helpers import make_platform
from support import BIN, free_port, stop_group, wait_for_http

# The real scheduler takes minutes: run by `make test-scheduler` (and CI), not by the default `make test`.
pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
MODEL_NAME = "e2e-scheduler"
DAG_ID = "ml_model_training"


def api(base: str, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, mlflow_server):
    home = tmp_path_factory.mktemp("scheduler")
    airflow_home = home / "airflow"
    airflow_home.mkdir()
    env = make_platform(home, mlflow_url=mlflow_server, airflow_home=airflow_home, model_name=MODEL_NAME,
                        seed_args=("--customers", "1500", "--events-per-customer", "30", "--seed", "3"))
    port = free_port()
    env = {**env, "AIRFLOW__API__PORT": str(port), "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
           # Task processes report to the API server's execution API: on this port, not the default 8080.
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    # Without the pool, the real scheduler would leave the trainer tasks queued forever.
    subprocess.run([str(BIN / "airflow"), "pools", "set", "gpu_pool", "2", "GPU node pool"], env=env, check=True,
                   capture_output=True)
    log = open(home / "standalone.log", "w")
    process = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/api/v2/monitor/health", process, timeout=180)
        passwords = airflow_home / "simple_auth_manager_passwords.json.generated"
        deadline = time.time() + 60
        while not passwords.exists() and time.time() < deadline:
            time.sleep(1)
        username, password = next(iter(json.loads(passwords.read_text()).items()))
        token = api(base, "POST", "/auth/token", body={"username": username, "password": password})["access_token"]
        yield base, token, env
    finally:
        stop_group(process)
        log.close()


def test_manual_run_through_the_rest_api_with_params(standalone):
    base, token, env = standalone
    deadline = time.time() + 120
    while True:  # the DAG processor parses the file shortly after start
        try:
            api(base, "GET", f"/api/v2/dags/{DAG_ID}", token)
            break
        except urllib.error.HTTPError:
            assert time.time() < deadline, "the DAG never appeared in the API"
            time.sleep(2)
    api(base, "PATCH", f"/api/v2/dags/{DAG_ID}", token, {"is_paused": False})
    run = api(base, "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token,
              {"logical_date": None, "conf": {"n_trials": 2, "max_boost_rounds": 200}, "note": "e2e"})
    run_id = run["dag_run_id"]
    deadline = time.time() + 600
    while True:
        state = api(base, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}", token)["state"]
        if state in ("success", "failed"):
            break
        assert time.time() < deadline, f"run still {state} after 10 minutes"
        time.sleep(5)
    tasks = api(base, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances", token)
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tasks["task_instances"]}
    if state != "success":
        failed = [t for t in tasks["task_instances"] if t["state"] == "failed"]
        logs = [api(base, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/"
                    f"{t['task_id']}/logs/{t['try_number']}?full_content=true", token) for t in failed[:1]]
        pytest.fail(f"run {state}: {states}\n{json.dumps(logs)[-6000:]}")
    # The Params of the trigger were used: two trials, not the default eight.
    assert states[("train_trial", 0)] == states[("train_trial", 1)] == "success"
    assert ("train_trial", 2) not in states
    # Unpausing also starts the latest scheduled interval, so this run may meet a champion: exactly one
    # branch ran, the other was skipped.
    assert sorted([states[("promote", -1)], states[("reject", -1)]]) == ["skipped", "success"]
    trials = [t for t in tasks["task_instances"] if t["task_id"] == "train_trial"]
    assert all(t["pool"] == "gpu_pool" for t in trials)

    from mlflow import MlflowClient

    champion = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(MODEL_NAME, "champion")
    summary = json.loads((Path(env["MLPLATFORM_HOME"]) / "artifacts" / "runs" / DAG_ID / "latest-summary.json")
                         .read_text())
    assert summary["run_id"] == run_id
    assert str(summary["champion_version"]) == champion.version

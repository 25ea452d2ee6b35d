"""What a person does in the browser: `make ui`'s Airflow and MLflow servers, driven in Debian's Chromium.

Log in; every DAG's trigger form is valid with its defaults; a training run triggered from the form with a changed
Param succeeds; invalid values are refused; the MLflow UI shows the champion alias and the run's plots.
Screenshots of each page go to build/test-ui/ (git-ignored). Run by `make test-ui`, which installs Chromium and
the pinned Playwright (no browser download); minutes, so not part of `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlplatform.params import MONITORING_FORM, SCORING_FORM, TRAINING_FORM
from support import BIN, REPO_ROOT, airflow_env, free_port, stop_group, wait_for_http

pytestmark = [pytest.mark.e2e, pytest.mark.ui]
FORMS = {"ml_model_training": TRAINING_FORM, "batch_prediction": SCORING_FORM, "model_monitoring": MONITORING_FORM}
DAG_IDS = list(FORMS)
MODEL_NAME = "customer-churn"  # the embedded default (settings)
SHOTS = REPO_ROOT / "build" / "test-ui"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# As the machine notes say: without the background-networking flags Chromium keeps calling out (refused here).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT = 900


def stop_leftovers(home: Path) -> None:
    """Any process of this platform still running (its environment names our home): killed by PID."""
    import psutil

    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get("MLPLATFORM_HOME") == str(home):
                process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass


def api(base: str, token: str, method: str, path: str) -> dict:
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """`make ui` on a seeded embedded platform of its own: `python -m devtools.cli ui`, as the target runs it."""
    home = tmp_path_factory.mktemp("ui")
    airflow_port, mlflow_port = free_port(), free_port()
    env = {
        **os.environ, **airflow_env(home / "airflow"),
        "MLPLATFORM_HOME": str(home), "PIPELINE_RUNTIME": "local", "ARTIFACT_ROOT": f"file://{home}/artifacts",
        "WAREHOUSE_URI": f"sqlite:///{home}/warehouse.db", "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Only the runs triggered here: unpausing must not also start the latest cron interval.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # A loaded 2-core machine parses a DAG file (kubernetes imports) and answers the task API slowly.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300", "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
    }
    subprocess.run([sys.executable, "-m", "features", "seed", "--customers", "1500", "--events-per-customer", "30",
                    "--seed", "3"], env=env, check=True, capture_output=True)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([str(BIN / "airflow"), "pools", "set", "gpu_pool", "2", "GPU node pool"], env=env, check=True,
                   capture_output=True)
    with open(home / "ui.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.cli", "ui", "--airflow-port", str(airflow_port),
             "--mlflow-port", str(mlflow_port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        base, mlflow_url = f"http://127.0.0.1:{airflow_port}", f"http://127.0.0.1:{mlflow_port}"
        try:
            wait_for_http(f"{mlflow_url}/health", process, timeout=300)
            wait_for_http(f"{base}/api/v2/monitor/health", process, timeout=400)
            passwords = home / "airflow" / "simple_auth_manager_passwords.json.generated"
            deadline = time.time() + 60
            while not passwords.exists() and time.time() < deadline:
                time.sleep(1)
            password = json.loads(passwords.read_text())["admin"]
            token = json.loads(urllib.request.urlopen(urllib.request.Request(
                f"{base}/auth/token", data=json.dumps({"username": "admin", "password": password}).encode(),
                headers={"Content-Type": "application/json"}), timeout=60).read())["access_token"]
            deadline = time.time() + 300
            while True:  # the DAG processor parses the three files after start
                listed = {dag["dag_id"] for dag in api(base, token, "GET", "/api/v2/dags")["dags"]}
                if set(DAG_IDS) <= listed:
                    break
                assert time.time() < deadline, f"DAGs never listed: {listed}"
                time.sleep(3)
            yield {"base": base, "mlflow": mlflow_url, "password": password, "token": token, "env": env, "home": home}
        finally:
            stop_group(process, grace=40)
            stop_leftovers(home)


@pytest.fixture(scope="module")
def page(platform):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_form(page, platform, dag_id: str):
    page.goto(f"{platform['base']}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()  # the DAG page's (its name holds an icon too)
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"Trigger Dag - {dag_id}").wait_for()
    return dialog


def open_section(dialog, section: str) -> None:
    """Sections other than the default are collapsed, and one opens at a time."""
    dialog.get_by_role("button", name=section, exact=True).click()


def form_trigger(dialog):
    return dialog.get_by_role("button", name="Trigger", exact=True)


def assert_refused(page, dialog, param: str, reason: str, name: str) -> None:
    """Trigger: Airflow refuses the value and the dialog says which Param and why."""
    form_trigger(dialog).click()
    message = dialog.get_by_text(f"Invalid input for param {param}")
    message.wait_for()
    assert reason in message.inner_text()
    message.scroll_into_view_if_needed()
    shot(page, name)


def test_log_in(page, platform):
    page.goto(platform["base"])
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(platform["password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
    page.get_by_role("link", name="Dags").first.click()
    for dag_id in DAG_IDS:
        page.get_by_role("link", name=dag_id).first.wait_for()
    shot(page, "01-dags")


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_each_form_is_valid_with_its_defaults(page, platform, dag_id):
    dialog = open_form(page, platform, dag_id)
    sections = [name for name in dialog.locator("button[data-part=item-trigger]").all_inner_texts()
                if name.strip() != "Advanced Options"]
    for section in sections:
        open_section(dialog, section)
        page.wait_for_timeout(300)
        # no field of the section is marked invalid (the form's red mark on a missing required value)
        invalid = dialog.locator("[data-invalid]:visible label").all_inner_texts()
        shot(page, f"02-form-{dag_id}-{section.strip().lower().replace(' ', '-')}")
        assert invalid == [], f"{dag_id}: the form marks fields of {section} invalid with their defaults"
    assert form_trigger(dialog).is_enabled(), f"{dag_id}: the form's Trigger button is disabled with the defaults"
    assert sections == list(FORMS[dag_id])  # the form reads like the pipeline
    page.keyboard.press("Escape")


def test_the_form_refuses_invalid_values_with_a_message(page, platform):
    dialog = open_form(page, platform, "ml_model_training")
    open_section(dialog, "Source")
    entity_key = dialog.locator("input[name=element_entity_key]")
    entity_key.fill("customer id")
    assert_refused(page, dialog, "entity_key", "'customer id' does not match", "03-invalid-identifier")
    entity_key.fill("customer_id")

    open_section(dialog, "Training")
    n_trials = dialog.locator("input[name=element_n_trials]")
    n_trials.fill("-1")
    n_trials.blur()
    assert n_trials.input_value() == "1"  # the number field does not keep a value under its minimum
    # typed as the run's configuration instead, the value reaches Airflow's validation and is refused
    open_section(dialog, "Advanced Options")
    editor = dialog.locator(".monaco-editor").last
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text('{"n_trials": -1}')
    page.keyboard.press("Shift+Control+End")  # what the editor closed by itself after the cursor
    page.keyboard.press("Delete")
    dialog.get_by_text("Configuration JSON").click()  # leaving the editor applies it to the form
    assert_refused(page, dialog, "n_trials", "-1 is less than the minimum of 1", "04-invalid-n-trials")
    page.keyboard.press("Escape")
    runs = api(platform["base"], platform["token"], "GET", "/api/v2/dags/ml_model_training/dagRuns")
    assert runs["total_entries"] == 0, "a refused form created a run"


def test_a_training_run_triggered_from_the_form_succeeds_with_the_changed_param(page, platform):
    base, token = platform["base"], platform["token"]
    dialog = open_form(page, platform, "ml_model_training")
    open_section(dialog, "Training")
    dialog.locator("input[name=element_n_trials]").fill("2")
    dialog.locator("input[name=element_max_boost_rounds]").fill("200")  # a small fit: minutes, not tens
    dialog.locator("input[name=element_max_boost_rounds]").blur()
    shot(page, "05-trigger-n-trials-2")
    form_trigger(dialog).click()
    dialog.wait_for(state="hidden")

    runs = api(base, token, "GET", "/api/v2/dags/ml_model_training/dagRuns")["dag_runs"]
    assert len(runs) == 1 and runs[0]["run_type"] == "manual"
    run_id = urllib.parse.quote(runs[0]["dag_run_id"])
    deadline = time.time() + RUN_TIMEOUT
    while (state := api(base, token, "GET", f"/api/v2/dags/ml_model_training/dagRuns/{run_id}")["state"]) not in (
            "success", "failed"):
        assert time.time() < deadline, f"run still {state} after {RUN_TIMEOUT}s"
        time.sleep(5)
    run = api(base, token, "GET", f"/api/v2/dags/ml_model_training/dagRuns/{run_id}")
    tasks = api(base, token, "GET", f"/api/v2/dags/ml_model_training/dagRuns/{run_id}/taskInstances")
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tasks["task_instances"]}
    page.goto(f"{base}/dags/ml_model_training/runs/{runs[0]['dag_run_id']}")
    page.wait_for_timeout(2000)
    shot(page, "06-run")
    assert state == "success", states
    assert run["conf"]["n_trials"] == 2
    assert sorted(i for (task, i) in states if task == "train_trial") == [0, 1]


@pytest.mark.parametrize("dag_id", ["batch_prediction", "model_monitoring"])
def test_scoring_and_monitoring_trigger_from_the_form_with_their_defaults(page, platform, dag_id):
    dialog = open_form(page, platform, dag_id)
    form_trigger(dialog).click()
    dialog.wait_for(state="hidden")
    runs = api(platform["base"], platform["token"], "GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]
    assert [run["run_type"] for run in runs] == ["manual"]
    assert runs[0]["conf"]["features_table"] is None and runs[0]["conf"]["score_date"] is None


def test_mlflow_lists_the_champion_alias_and_the_runs_plots(page, platform):
    from mlflow import MlflowClient

    client = MlflowClient(platform["env"]["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    run = client.get_run(champion.run_id)
    page.goto(f"{platform['mlflow']}/#/models/{MODEL_NAME}")
    page.get_by_text("champion").first.wait_for()
    shot(page, "07-mlflow-model")
    page.goto(f"{platform['mlflow']}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/plots")
    for plot in ("roc.png", "pr.png", "feature_importance.png", "confusion_matrix.png"):
        page.get_by_text(plot, exact=True).first.wait_for()
    shot(page, "08-mlflow-plots")

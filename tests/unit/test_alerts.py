"""Alerts against a real HTTP receiver on 127.0.0.1 (no mocked HTTP): shape, retries, failure modes, scrubbing."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from mlplatform import alerts
from support import free_port


class Receiver:
    """A webhook receiver that records every request and answers with scripted status codes (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0/B0/PATHSECRET?token=QUERYSECRET"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def json(self, index: int = -1) -> dict:
        return json.loads(self.requests[index]["body"])


@pytest.fixture
def receiver(monkeypatch):
    server = Receiver()
    server.thread.start()
    monkeypatch.setenv(alerts.WEBHOOK_ENV, server.url)
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def alert_logs(caplog):
    caplog.set_level(logging.INFO, logger=alerts.__name__)
    return caplog


def failing_task_context(exception: BaseException | str) -> dict:
    """What the Task SDK hands an on_failure_callback: the template context plus ``exception``."""
    ti = SimpleNamespace(
        dag_id="ml_model_training", run_id="scheduled__2026-03-01T03:00:00+00:00", task_id="train_trial",
        map_index=2, try_number=3,
        log_url="http://airflow.local/dags/ml_model_training/runs/r/tasks/train_trial/mapped/2?try_number=3",
    )
    return {
        "dag": SimpleNamespace(dag_id="ml_model_training"), "task": SimpleNamespace(task_id="train_trial"),
        "ti": ti, "task_instance": ti, "run_id": ti.run_id, "exception": exception,
    }


def test_alert_is_json_with_the_envelope_and_payload(receiver):
    before = datetime.now().astimezone()
    assert alerts.post_alert("model_promoted", {"version": "7", "auc": 0.83, "event": "spoofed"}) is True

    [request] = receiver.requests
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["path"] == "/hooks/T0/B0/PATHSECRET?token=QUERYSECRET"
    body = receiver.json()
    assert body["event"] == "model_promoted"  # the envelope wins over payload keys of the same name
    assert body["source"] == "mlplatform"
    assert before <= datetime.fromisoformat(body["sent_at"]) <= datetime.now().astimezone()
    assert body["version"] == "7" and body["auc"] == 0.83


def test_task_failure_callback_posts_one_task_failed_alert(receiver):
    error = RuntimeError("trainer pod exited with 137 " + "x" * 5000)
    assert alerts.task_failure_alert(failing_task_context(error)) is None

    [_] = receiver.requests
    body = receiver.json()
    assert body["event"] == "task_failed"
    assert {k: body[k] for k in ("dag_id", "run_id", "task_id", "map_index", "try_number")} == {
        "dag_id": "ml_model_training", "run_id": "scheduled__2026-03-01T03:00:00+00:00",
        "task_id": "train_trial", "map_index": 2, "try_number": 3,
    }
    assert body["exception"].startswith("RuntimeError: trainer pod exited with 137")
    assert len(body["exception"]) <= alerts.MAX_EXCEPTION_CHARS
    assert body["log_url"].endswith("/tasks/train_trial/mapped/2?try_number=3")


def test_task_failure_callback_with_the_real_task_sdk_instance(receiver):
    """The stand-in above must not drift from what Airflow passes: use the Task SDK's own task instance."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    ti = RuntimeTaskInstance.model_construct(
        dag_id="ml_model_training", run_id="manual__1", task_id="evaluate", map_index=-1, try_number=1,
    )
    alerts.task_failure_alert({"ti": ti, "task_instance": ti, "run_id": "manual__1", "exception": "killed"})

    body = receiver.json()
    assert (body["dag_id"], body["task_id"], body["map_index"], body["try_number"]) == (
        "ml_model_training", "evaluate", -1, 1,
    )
    assert body["exception"] == "killed"
    assert body["log_url"].endswith("/dags/ml_model_training/runs/manual__1/tasks/evaluate?try_number=1")


def test_a_broken_context_never_raises_out_of_the_callback(receiver):
    class ExplodingTaskInstance:
        dag_id, run_id, task_id, map_index, try_number = "d", "r", "t", -1, 1

        @property
        def log_url(self):
            raise RuntimeError("no [api] base_url")

    alerts.task_failure_alert({"ti": ExplodingTaskInstance(), "exception": None})
    assert receiver.json()["log_url"] is None and receiver.json()["task_id"] == "t"
    alerts.task_failure_alert(None)  # not even a mapping: logged, not raised
    assert len(receiver.requests) == 1


def test_dag_failure_callback_works_with_the_minimal_dag_processor_context(receiver):
    alerts.dag_failure_alert({"dag": SimpleNamespace(dag_id="batch_prediction"), "run_id": "r1", "reason": "timed_out"})
    body = receiver.json()
    assert (body["event"], body["dag_id"], body["run_id"], body["reason"]) == (
        "dag_failed", "batch_prediction", "r1", "timed_out",
    )
    assert body["last_task_id"] is None


def test_server_error_is_retried_and_then_delivered(receiver):
    receiver.statuses = [500]
    assert alerts.post_alert("task_failed", {"task_id": "extract"}) is True
    assert len(receiver.requests) == 2
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]


def test_persistent_server_errors_give_up_after_the_retries(receiver):
    receiver.statuses = [503] * 10
    assert alerts.post_alert("task_failed", {}, retries=2, backoff=0.01) is False
    assert len(receiver.requests) == 3


def test_client_error_is_not_retried(receiver):
    receiver.statuses = [400]
    assert alerts.post_alert("task_failed", {}) is False
    assert len(receiver.requests) == 1


def test_receiver_down_returns_false_quickly_without_raising(alert_logs):
    url = f"http://127.0.0.1:{free_port()}/hook?token=QUERYSECRET"  # nothing listens there
    started = time.monotonic()
    assert alerts.post_alert("task_failed", {"task_id": "extract"}, webhook_url=url) is False
    assert time.monotonic() - started < 3.0
    assert "not delivered" in alert_logs.text
    assert "QUERYSECRET" not in alert_logs.text


def test_a_hanging_receiver_is_cut_off_by_the_timeout(receiver):
    receiver.delay = 1.0
    started = time.monotonic()
    assert alerts.post_alert("task_failed", {}, timeout=0.2, retries=0) is False
    assert time.monotonic() - started < 0.9


def test_secrets_never_reach_the_receiver(receiver):
    payload = {
        "warehouse_uri": "postgresql://user:pw-9f3k@host/db",
        "password": "hunter2-9f3k",
        "config": {"MLFLOW_TRACKING_TOKEN": "tok-9f3k", "endpoints": ["https://svc/?api_key=key-9f3k&x=1"]},
    }
    assert alerts.post_alert("drift_detected", payload) is True
    error = ConnectionError('could not connect to "postgresql+psycopg://etl:pw2-9f3k@db:5432/wh"')
    alerts.task_failure_alert(failing_task_context(error))

    raw = b"".join(request["body"] for request in receiver.requests).decode()
    assert len(receiver.requests) == 2
    assert "9f3k" not in raw
    first, second = receiver.json(0), receiver.json(1)
    assert first["warehouse_uri"] == "postgresql://user:***@host/db"
    assert first["password"] == "***" and first["config"]["MLFLOW_TRACKING_TOKEN"] == "***"
    assert first["config"]["endpoints"] == ["https://svc/?api_key=***&x=1"]
    assert "postgresql+psycopg://etl:***@db:5432/wh" in second["exception"]


def test_the_webhook_url_is_logged_without_its_path_or_query(receiver, alert_logs):
    assert alerts.post_alert("task_failed", {}) is True
    assert "delivered to http://127.0.0.1:" in alert_logs.text
    assert "QUERYSECRET" not in alert_logs.text and "PATHSECRET" not in alert_logs.text


@pytest.mark.parametrize("configured", ["", "   "])
def test_no_webhook_configured_sends_nothing(receiver, alert_logs, monkeypatch, configured):
    monkeypatch.setenv(alerts.WEBHOOK_ENV, configured)
    assert alerts.post_alert("task_failed", {}) is False
    assert alerts.alert("task_failed", task_id="x") is False
    assert receiver.requests == []
    assert "alerting is off" in alert_logs.text


def test_unset_webhook_sends_nothing(receiver, monkeypatch):
    monkeypatch.delenv(alerts.WEBHOOK_ENV)
    assert alerts.post_alert("task_failed", {}) is False
    assert receiver.requests == []


def test_only_http_webhooks_are_used(tmp_path):
    target = tmp_path / "not-a-webhook"
    target.write_text("")
    assert alerts.post_alert("task_failed", {}, webhook_url=f"file://{target}") is False


def test_drift_alert_carries_the_report_and_lifts_the_breached_features(receiver):
    report = {
        "psi": {"sessions_7d": 0.31, "tenure_days": 0.02, "spend_30d": float("nan")},
        "thresholds": {"warn": 0.1, "alert": 0.25},
        "breached_features": ["sessions_7d"],
    }
    assert alerts.drift_alert("model_monitoring", "scheduled__2026-03-02", report) is True
    body = receiver.json()
    assert body["event"] == "drift_detected"
    assert (body["dag_id"], body["run_id"]) == ("model_monitoring", "scheduled__2026-03-02")
    assert body["breached_features"] == ["sessions_7d"]
    assert body["report"]["psi"] == {"sessions_7d": 0.31, "tenure_days": 0.02, "spend_30d": "nan"}
    assert body["report"]["thresholds"] == {"warn": 0.1, "alert": 0.25}


def test_rollback_alert_sends_the_audited_alias_move(receiver):
    from mlplatform.registry import AliasMove

    move = AliasMove("customer-churn", "champion", "4", "5", "rollback", "AUC fell to 0.61", "model_monitoring", "r9",
                     {"auc": 0.61})
    assert alerts.rollback_alert(asdict(move)) is True
    body = receiver.json()
    assert body["event"] == "model_rolled_back"
    assert (body["to_version"], body["from_version"], body["reason"]) == ("4", "5", "AUC fell to 0.61")
    assert body["metrics"] == {"auc": 0.61}

"""Alerts to a webhook: failed tasks, drift, rollbacks.

One JSON POST per event to ``ALERT_WEBHOOK_URL`` (any receiver that accepts JSON: Slack/Teams relays,
Alertmanager-style gateways, a small in-house service). Unset means alerting is off: nothing is sent and
nothing fails. Standard library (and the light contract package) only: DAG files import this at parse time.

An alert must never turn into a second failure: every function here logs and returns ``False`` instead of
raising. Secrets never leave the process: values under secret-looking keys and the ``user:password@`` part
of any URI are masked before sending, and the webhook URL (whose path or query often *is* the token) is
logged as scheme and host only.

Wiring (Airflow 3 runs task callbacks in the task's own process, the DAG-level one in the dag processor)::

    @dag(..., default_args={"on_failure_callback": task_failure_alert}, on_failure_callback=dag_failure_alert)
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlcontract.source import mask_uri

log = logging.getLogger(__name__)

WEBHOOK_ENV = "ALERT_WEBHOOK_URL"
SOURCE = "mlplatform"
MASK = "***"  # the same mark as mlcontract.source.mask_uri
MAX_EXCEPTION_CHARS = 2000
ENVELOPE_KEYS = ("event", "source", "sent_at")

# Substrings of a key whose value is never sent. Over-masking (e.g. ``max_tokens``) is the safe error.
_SECRET_KEY = re.compile(r"passw|pwd|secret|token|api[_-]?key|credential|authorization|private[_-]?key|cookie", re.IGNORECASE)
# A URI anywhere in a text (an exception message, a config value): masked whole by mlcontract's mask_uri.
_URI = re.compile(r"\b[a-z][a-z0-9+.\-]*://\S+", re.IGNORECASE)
_RETRYABLE_STATUS = frozenset({408, 425, 429}) | frozenset(range(500, 600))


def mask_text(text: str) -> str:
    """Mask the password and secret-looking query parameters of every URI in ``text``."""
    return _URI.sub(lambda match: mask_uri(match[0]), text)


def scrub(value: Any) -> Any:
    """A JSON-safe copy of ``value`` with secrets masked, at any depth."""
    if isinstance(value, Mapping):
        return {
str(key): MASK if _SECRET_KEY.search(str(key)) else scrub(item) for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN/inf are not JSON
    if isinstance(value, datetime):
        return value.isoformat()
    return mask_text(str(value))


def redact_url(url: str) -> str:
    """What may be logged of the webhook URL: scheme, host and port; never its path, query or user info."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or '?'}{port}/…"
    except ValueError:
        return "<unparseable webhook URL>"


def _send(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"{SOURCE}-alerts"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


def post_alert(
    event: str,
    payload: dict,
    *,
    webhook_url: str | None = None,
    timeout: float = 5.0,
    retries: int = 3,
    backoff: float = 0.25,
) -> bool:
    """POST ``{"event", "source", "sent_at", **payload}`` (scrubbed) to the webhook; True when delivered.

    ``webhook_url`` defaults to ``$ALERT_WEBHOOK_URL``; unset means alerting is off. Connection errors,
    timeouts, 408/425/429 and 5xx are retried ``retries`` times with doubling ``backoff``; other 4xx are
    final. Never raises. The envelope keys win over payload keys of the same name.
    """
    try:
        url = webhook_url if webhook_url is not None else os.environ.get(WEBHOOK_ENV, "")
        url = url.strip()
        if not url:
            log.info("alerting is off (%s is not set); not sending %r", WEBHOOK_ENV, event)
            return False
        target = redact_url(url)
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            log.error("alert %r not sent: webhook %s is not an http(s) URL", event, target)
            return False
        message = {
            "event": event,
            "source": SOURCE,
            "sent_at": datetime.now(UTC).isoformat(),
            **{key: value for key, value in (payload or {}).items() if key not in ENVELOPE_KEYS},
        }
        body = json.dumps(scrub(message)).encode("utf-8")
    except Exception:
        log.exception("alert %r not sent: could not build the message", event)
        return False

    attempts = max(0, retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            status = _send(url, body, timeout)
            log.info("alert %r delivered to %s (HTTP %s, attempt %d)", event, target, status, attempt)
            return True
        except urllib.error.HTTPError as error:
            retryable, outcome = error.code in _RETRYABLE_STATUS, f"HTTP {error.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:  # refused, DNS, timeout
            reason = getattr(error, "reason", error)
            retryable, outcome = True, mask_text(f"{type(reason).__name__}: {reason}")
        except Exception as error:  # noqa: BLE001
            retryable, outcome = False, f"{type(error).__name__}"
        if not retryable or attempt == attempts:
            log.warning("alert %r not delivered to %s after %d attempt(s): %s", event, target, attempt, outcome)
            return False
        log.info("alert %r to %s failed (%s); retrying", event, target, outcome)
        time.sleep(backoff * 2 ** (attempt - 1))
    return False


def alert(event: str, **fields: Any) -> bool:
    """Shorthand: ``alert("model_promoted", dag_id=..., version=...)``."""
    return post_alert(event, fields)


def _get(obj: Any, name: str) -> Any:
    """An attribute that may be missing or may raise (``ti.log_url`` reads the config)."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001
        return None


def exception_text(exception: Any, limit: int = MAX_EXCEPTION_CHARS) -> str | None:
    if exception is None:
        return None
    text = f"{type(exception).__name__}: {exception}" if isinstance(exception, BaseException) else str(exception)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def task_failure_alert(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` for tasks: event ``task_failed`` with ids, try, exception and log URL."""
    try:
        ti = context.get("ti") or context.get("task_instance")
        dag = context.get("dag")
        payload = {
            "dag_id": _get(ti, "dag_id") or _get(dag, "dag_id"),
            "run_id": context.get("run_id") or _get(ti, "run_id"),
            "task_id": _get(ti, "task_id") or _get(context.get("task"), "task_id"),
            "map_index": _get(ti, "map_index"),
            "try_number": _get(ti, "try_number") or context.get("try_number"),
            "exception": exception_text(context.get("exception")),
            "log_url": _get(ti, "log_url"),
        }
    except Exception:
        log.exception("task_failure_alert could not read the callback context")
        return
    post_alert("task_failed", payload)


def dag_failure_alert(context: Mapping[str, Any]) -> None:
    """``on_failure_callback`` for a DAG (runs in the dag processor): event ``dag_failed`` with the reason.

    Catches what task callbacks cannot, e.g. a ``dagrun_timeout``. The context may hold only
    ``dag``, ``run_id`` and ``reason``; ``ti`` (the last task instance), when present, adds its task and log.
    """
    try:
        ti = context.get("ti")
        payload = {
            "dag_id": _get(context.get("dag"), "dag_id") or _get(ti, "dag_id"),
            "run_id": context.get("run_id"),
            "reason": context.get("reason"),
            "last_task_id": _get(ti, "task_id"),
            "log_url": _get(ti, "log_url"),
        }
    except Exception:
        log.exception("dag_failure_alert could not read the callback context")
        return
    post_alert("dag_failed", payload)


def drift_alert(dag_id: str, run_id: str, report: dict) -> bool:
    """Event ``drift_detected``, for the monitoring DAG.

    ``report`` is sent whole under ``"report"`` (expected keys: ``psi`` per feature, ``thresholds``,
    ``breached_features``); ``breached_features`` is also lifted to the top level for routing rules.
    """
    return post_alert(
        "drift_detected",
        {
            "dag_id": dag_id,
            "run_id": run_id,
            "breached_features": list((report or {}).get("breached_features") or []),
            "report": report,
        },
    )


def rollback_alert(move: Mapping[str, Any]) -> bool:
    """Event ``model_rolled_back`` from a rollback's alias move (``dataclasses.asdict(registry.rollback(...))``)."""
    return post_alert("model_rolled_back", dict(move))

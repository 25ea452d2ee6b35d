"""Preflight: the services a training run needs, checked before any compute, in seconds.

MLflow, the warehouse and the artifact store are each checked with a bounded timeout, all at once; every
failure is one line naming the service, where it is (credentials masked) and what went wrong. Without this
an unreachable MLflow is found only at the final fit, after the trials and minutes of HTTP retries.

The warehouse is checked where its URI is known to Airflow (``WAREHOUSE_URI``; the local runtime's embedded
default). On a cluster its credentials live only in the step pods' Secret, and the first step (``extract``)
is the check: the result says so instead of claiming a check it did not make.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlsplit

from mlcontract import storage
from mlcontract.errors import PipelineError
from mlcontract.source import mask_uri

from mlplatform.settings import Settings, load_settings
from mlplatform.steps import LOCAL_SECRET_DEFAULTS

DEFAULT_TIMEOUT_S = 10.0
PROBE_FILE = ".preflight-probe"


class PreflightFailed(PipelineError):
    """A service the run needs is unreachable or unusable; one line per service."""


def check_mlflow(tracking_uri: str, timeout: float) -> str:
    """The tracking server answers ``/health`` (HTTP), or the local store's folder exists (SQLite, files)."""
    scheme = urlsplit(tracking_uri).scheme
    where = mask_uri(tracking_uri)
    if scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # http(s) only, checked above
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PreflightFailed(f"MLflow at {where} is unreachable: {reason}") from None
        if status >= 400:
            raise PreflightFailed(f"MLflow at {where} answers /health with HTTP {status}")
        return f"MLflow at {where}: healthy"
    if scheme == "sqlite":
        path = Path(tracking_uri.split(":///", 1)[-1])
        if not path.parent.is_dir():
            raise PreflightFailed(f"MLflow store {where}: folder {path.parent} does not exist")
        return f"MLflow store {where}: folder present"
    return f"MLflow at {where}: scheme {scheme!r} not checked"


def check_warehouse(warehouse_uri: str | None, timeout: float) -> str:
    """One ``SELECT 1`` on the warehouse (a SQLite file must exist: connecting would create an empty one)."""
    if not warehouse_uri:
        return "warehouse: credentials only in the step pods; the extract step is its check"
    import sqlalchemy as sa

    where = mask_uri(warehouse_uri)
    url = sa.engine.make_url(warehouse_uri)
    connect_args: dict = {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not Path(url.database).is_file():
            raise PreflightFailed(f"warehouse {where}: no such SQLite file")
        connect_args["timeout"] = timeout
    elif url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(1, int(timeout))
    engine = sa.create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise PreflightFailed(f"warehouse {where} is unreachable: {detail}") from None
    finally:
        engine.dispose()
    return f"warehouse {where}: answers"


def check_artifact_store(artifact_root: str, timeout: float) -> str:
    """Write, read back and delete a small probe file under the artifact root."""
    probe = storage.join_uri(artifact_root, PROBE_FILE)
    try:
        storage.write_bytes(probe, b"ok")
        if storage.read_bytes(probe) != b"ok":
            raise PreflightFailed(f"artifact store {artifact_root}: a probe file read back different bytes")
        storage.remove(probe)
    except PreflightFailed:
        raise
    except Exception as error:  # noqa: BLE001 (fsspec backends raise their own types; each becomes one line)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PreflightFailed(f"artifact store {artifact_root} is not writable: {detail}") from None
    return f"artifact store {artifact_root}: writable"


def run_checks(checks: dict[str, Callable[[], str]], timeout: float) -> list[str]:
    """Run the checks in parallel, each bounded by ``timeout``; PreflightFailed with one line per failure."""
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="preflight")
    futures = {name: pool.submit(check) for name, check in checks.items()}
    passed, failed = [], []
    for name, future in futures.items():
        try:
            passed.append(future.result(timeout=timeout))
        except FutureTimeout:
            failed.append(f"{name}: no answer within {timeout:g} s")
        except PipelineError as error:
            failed.append(str(error))
    pool.shutdown(wait=False, cancel_futures=True)  # a hung check must not hold the task
    if failed:
        raise PreflightFailed("; ".join(failed))
    return passed


def preflight(settings: Settings | None = None, timeout: float = DEFAULT_TIMEOUT_S,
              warehouse_uri: str | None = None) -> list[str]:
    """Check MLflow, the warehouse and the artifact store; the passed checks' lines, or PreflightFailed."""
    settings = settings or load_settings()
    if warehouse_uri is None:  # the pods' value where Airflow has it; on a cluster only the pods do
        embedded = LOCAL_SECRET_DEFAULTS["WAREHOUSE_URI"] if settings.runtime != "kubernetes" else lambda: None
        warehouse_uri = os.environ.get("WAREHOUSE_URI") or embedded()
    lines = run_checks({
        "MLflow": lambda: check_mlflow(settings.mlflow_tracking_uri, timeout),
        "warehouse": lambda: check_warehouse(warehouse_uri, timeout),
        "artifact store": lambda: check_artifact_store(settings.artifact_root, timeout),
    }, timeout)
    for line in lines:
        print(line)
    return lines

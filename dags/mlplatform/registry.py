"""Registry operations on MLflow model aliases (never stages), each alias move recorded for audit.

Aliases: ``challenger`` (set by the trainer), ``champion`` (serving), ``previous-champion`` (rollback target).
Every move is written as an audit record (who, which DAG run, why, metrics compared) to the artifact store
and summarised in tags on the model versions involved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"


@dataclass(frozen=True)
class AliasMove:
    model_name: str
    alias: str
    to_version: str
    from_version: str | None
    action: str  # promote | reject | rollback
    reason: str
    dag_id: str
    run_id: str
    metrics: dict[str, Any] = field(default_factory=dict)
    moved_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(tracking_uri: str, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def _audit_uri(artifact_root: str, move: AliasMove) -> str:
    safe_run = move.run_id.replace("/", "_")
    return f"{artifact_root}/registry/{move.model_name}/alias-moves/{move.dag_id}/{safe_run}/{move.action}.json"


def record(artifact_root: str, move: AliasMove) -> str:
    """Write the audit record (one per DAG run and action, so a rerun overwrites instead of duplicating)."""
    from features import io

    uri = _audit_uri(artifact_root, move)
    io.atomic_write_json(uri, asdict(move))
    return uri


def promote(
    tracking_uri: str, artifact_root: str, model_name: str, version: str, *, reason: str, dag_id: str,
    run_id: str, metrics: dict[str, Any],
) -> AliasMove:
    """Make ``version`` the champion; the champion it replaces becomes ``previous-champion``.

    Idempotent: promoting the version that is already champion (a task rerun) moves nothing.
    """
    client = _client(tracking_uri)
    current = alias_version(tracking_uri, model_name, CHAMPION)
    move = AliasMove(model_name, CHAMPION, str(version), current, "promote", reason, dag_id, run_id, metrics)
    if current != str(version):
        if current is not None:
            client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current)
        client.set_registered_model_alias(model_name, CHAMPION, str(version))
    client.set_model_version_tag(model_name, str(version), "promotion", json.dumps(
        {"action": "promote", "reason": reason, "replaced": current, "dag_id": dag_id, "run_id": run_id,
         "at": move.moved_at}
    ))
    record(artifact_root, move)
    return move


def reject(
    tracking_uri: str, artifact_root: str, model_name: str, version: str, *, reason: str, dag_id: str,
    run_id: str, metrics: dict[str, Any],
) -> AliasMove:
    """Record that a challenger was not promoted; the champion alias is left exactly as it was."""
    client = _client(tracking_uri)
    current = alias_version(tracking_uri, model_name, CHAMPION)
    move = AliasMove(model_name, CHAMPION, current or "", current, "reject", reason, dag_id, run_id, metrics)
    client.set_model_version_tag(model_name, str(version), "promotion", json.dumps(
        {"action": "reject", "reason": reason, "champion": current, "dag_id": dag_id, "run_id": run_id,
         "at": move.moved_at}
    ))
    record(artifact_root, move)
    return move


def rollback(
    tracking_uri: str, artifact_root: str, model_name: str, *, reason: str, dag_id: str, run_id: str,
    metrics: dict[str, Any],
) -> AliasMove:
    """Point ``champion`` back at ``previous-champion``."""
    client = _client(tracking_uri)
    current = alias_version(tracking_uri, model_name, CHAMPION)
    previous = alias_version(tracking_uri, model_name, PREVIOUS_CHAMPION)
    if previous is None:
        raise LookupError(f"{model_name} has no {PREVIOUS_CHAMPION!r} alias to roll back to")
    move = AliasMove(model_name, CHAMPION, previous, current, "rollback", reason, dag_id, run_id, metrics)
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    if current is not None:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current)
    record(artifact_root, move)
    return move

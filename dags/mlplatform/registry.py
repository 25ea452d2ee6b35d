"""Registry operations on MLflow model aliases (never stages), each alias move recorded for audit.

Aliases: ``challenger`` (set by the trainer), ``champion`` (serving), ``previous-champion`` (rollback target).
Every move is written as an audit record (who, which DAG run, why, metrics compared) to the artifact store
and summarised in tags on the model versions involved.

Promotion is a compare-and-set: given the champion the challenger was compared with (``expected_champion``,
None for "no champion"), ``champion`` moves only if it still points there; otherwise nothing moves and a
reject is recorded with the reason (two concurrent runs never both promote blindly). MLflow has no atomic
alias update, so the check and the move are two calls, milliseconds apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlcontract import layout, storage
from mlcontract.names import CHAMPION, PREVIOUS_CHAMPION
from mlcontract.registry import version_by_alias


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
    moved_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    # promotion: what the decision rested on (mlcontract.rules: compared, first model, ...) and the champion
    # version the challenger was compared with
    basis: str | None = None
    compared_with: str | None = None


ANY_CHAMPION = object()  # promote without the compare-and-set check (an A/B test decided by monitoring)


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(tracking_uri: str, model_name: str, alias: str) -> str | None:
    """The version behind ``alias``, or None when it is not set (mlcontract's one lookup and error policy)."""
    version = version_by_alias(client(tracking_uri), model_name, alias)
    return str(version.version) if version is not None else None


def record(artifact_root: str, move: AliasMove) -> str:
    """Write the audit record (one per DAG run and action, so a rerun overwrites instead of duplicating)."""
    uri = layout.audit_uri(artifact_root, move.model_name, move.dag_id, move.run_id, move.action)
    storage.write_json(uri, asdict(move))
    return uri


def _audited_decision(
    tracking_uri: str, artifact_root: str, move: AliasMove, version: str, **tag: Any
) -> AliasMove:
    """Tag the judged version with the decision and write the audit record."""
    client(tracking_uri).set_model_version_tag(move.model_name, str(version), "promotion", json.dumps(
        {"action": move.action, "reason": move.reason, **tag, "dag_id": move.dag_id, "run_id": move.run_id,
         "at": move.moved_at}
    ))
    record(artifact_root, move)
    return move


def promote(
    tracking_uri: str, artifact_root: str, model_name: str, version: str, *, reason: str, dag_id: str,
    run_id: str, metrics: dict[str, Any], expected_champion: str | None | object = ANY_CHAMPION,
    basis: str | None = None,
) -> AliasMove:
    """Make ``version`` the champion; the champion it replaces becomes ``previous-champion``.

    With ``expected_champion`` (a version, or None for "no champion"): only if ``champion`` still points
    there; otherwise a reject is recorded (``action="reject"``) and nothing moves.
    Idempotent: promoting the version that is already champion (a task rerun) moves nothing.
    """
    registry = client(tracking_uri)
    current = alias_version(tracking_uri, model_name, CHAMPION)
    compared = None if expected_champion is ANY_CHAMPION else expected_champion
    if expected_champion is not ANY_CHAMPION and current != expected_champion and current != str(version):
        was = f"v{expected_champion}" if expected_champion else "no champion"
        moved = (f"@{CHAMPION} moved from {was} to v{current} after this run compared v{version} with {was}: "
                 f"not promoted (a new run compares it with v{current})")
        return reject(tracking_uri, artifact_root, model_name, version, reason=f"{moved}; was: {reason}",
                      dag_id=dag_id, run_id=run_id, metrics=metrics, basis="champion moved", compared_with=compared)
    move = AliasMove(model_name, CHAMPION, str(version), current, "promote", reason, dag_id, run_id, metrics,
                     basis=basis, compared_with=compared)
    if current != str(version):
        if current is not None:
            registry.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current)
        registry.set_registered_model_alias(model_name, CHAMPION, str(version))
    return _audited_decision(tracking_uri, artifact_root, move, version, replaced=current)


def reject(
    tracking_uri: str, artifact_root: str, model_name: str, version: str, *, reason: str, dag_id: str,
    run_id: str, metrics: dict[str, Any], basis: str | None = None, compared_with: str | None = None,
) -> AliasMove:
    """Record that a challenger was not promoted; the champion alias is left exactly as it was."""
    current = alias_version(tracking_uri, model_name, CHAMPION)
    move = AliasMove(model_name, CHAMPION, current or "", current, "reject", reason, dag_id, run_id, metrics,
                     basis=basis, compared_with=compared_with)
    return _audited_decision(tracking_uri, artifact_root, move, version, champion=current)


def rollback(
    tracking_uri: str, artifact_root: str, model_name: str, *, reason: str, dag_id: str, run_id: str,
    metrics: dict[str, Any],
) -> AliasMove:
    """Point ``champion`` back at ``previous-champion``."""
    registry = client(tracking_uri)
    current = alias_version(tracking_uri, model_name, CHAMPION)
    previous = alias_version(tracking_uri, model_name, PREVIOUS_CHAMPION)
    if previous is None:
        raise LookupError(f"{model_name} has no {PREVIOUS_CHAMPION!r} alias to roll back to")
    move = AliasMove(model_name, CHAMPION, previous, current, "rollback", reason, dag_id, run_id, metrics)
    registry.set_registered_model_alias(model_name, CHAMPION, previous)
    if current is not None:
        registry.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current)
    record(artifact_root, move)
    return move

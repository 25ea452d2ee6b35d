"""The batch prediction DAG's Airflow-side task: pin the run to one concrete model version.

``resolve_champion`` looks up ``@champion``, its training snapshot (the features to build) and the A/B
deployment it serves; every step after it reads these pinned values, so a promotion during the run cannot
mix two models in one day's predictions. What the champion learnt (its task) and from what (events or a
ready-made feature table, and that table's snapshot and label columns) come from its training snapshot's
manifest, never from Params a user could set inconsistently; only the table to score is a Param.
"""

from __future__ import annotations

from typing import Any

from mlcontract.errors import PipelineError
from mlcontract.manifests import SnapshotManifest
from mlcontract.names import (
    AB_TEST,
    BINARY,
    CHAMPION,
    DEFAULT_MODEL_NAME,
    EVENTS_SOURCE,
    FEATURE_TABLE_SOURCE,
    FULL,
    LABEL,
    SNAPSHOT,
)
from mlcontract.registry import version_by_alias
from pydantic import BaseModel, ConfigDict

from mlplatform import deployment, registry
from mlplatform.deployment import Deployment
from mlplatform.params import SAMPLE_DATE
from mlplatform.settings import Settings, load_settings

SNAPSHOT_TAG = "snapshot_uri"  # set on every registered version by the trainer's train step


class ChampionUnavailable(PipelineError):
    """No champion to score with, or one whose training features are unknown."""


class TrainedOn(BaseModel):
    """What a model learnt and from what, read from its training snapshot's manifest: its task, and for a
    ready-made feature table the user's snapshot and label columns (events are scored per entity: none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = BINARY
    source_kind: str = EVENTS_SOURCE
    snapshot_column: str = ""
    label_column: str = ""


class PinnedChampion(TrainedOn):
    """What a batch prediction run scores with (pushed as one XCom per field)."""

    model_name: str
    version: str
    run_id: str | None
    snapshot_uri: str
    deploy_mode: str = FULL
    ab_challenger_share: float = 0.0
    # the A/B deployment's challenger, not whatever @challenger points at now (every training run moves it)
    challenger_version: str = ""
    score_date: str


SAMPLE_PIN = PinnedChampion(
    model_name=DEFAULT_MODEL_NAME, version="7", run_id=None, snapshot_uri="<the champion's training snapshot>",
    score_date=SAMPLE_DATE,
).model_dump()
SAMPLE_TRAINED_ON = TrainedOn().model_dump()


def source_kind(snapshot: SnapshotManifest) -> str:
    """What the snapshot was built from: a feature table's spec says how its columns are used
    (``table_columns``), an events spec leaves that empty."""
    return FEATURE_TABLE_SOURCE if snapshot.feature_config.get("table_columns") else EVENTS_SOURCE


def trained_on(snapshot: SnapshotManifest) -> TrainedOn:
    kind = source_kind(snapshot)
    # only a feature table's rows are chosen by these columns (events are scored per entity)
    columns = snapshot.columns if kind == FEATURE_TABLE_SOURCE else {}
    return TrainedOn(task=snapshot.task, source_kind=kind, snapshot_column=columns.get(SNAPSHOT, ""),
                     label_column=columns.get(LABEL, ""))


def training_snapshot_uri(champion: Any, model_name: str) -> str:
    """The training snapshot a registered version was fitted on (its ``snapshot_uri`` tag)."""
    snapshot_uri = (champion.tags or {}).get(SNAPSHOT_TAG)
    if not snapshot_uri:
        raise ChampionUnavailable(
            f"{model_name} v{champion.version} has no {SNAPSHOT_TAG!r} tag: its training features are unknown"
        )
    return snapshot_uri


def check_source(trained: TrainedOn, model: str, features_table: str | None) -> None:
    """Read from the kind of source the model learnt from: a ChampionUnavailable saying what to set."""
    if trained.source_kind == FEATURE_TABLE_SOURCE and not features_table:
        raise ChampionUnavailable(f"{model} was trained on a ready-made feature table: set features_table to it")
    if trained.source_kind == EVENTS_SOURCE and features_table:
        raise ChampionUnavailable(
            f"{model} was trained on events, not on a feature table: leave features_table empty "
            f"(it is {features_table!r})"
        )


def pin(champion: Any, record: Deployment | None, *, model_name: str, score_date: str,
        snapshot: SnapshotManifest | None = None) -> PinnedChampion:
    """Pin ``champion`` (an MLflow ModelVersion) and, when its deployment is an A/B test, the challenger arm;
    ``snapshot`` is its training snapshot's manifest, read from the tagged URI when None."""
    snapshot_uri = training_snapshot_uri(champion, model_name)
    snapshot = snapshot or SnapshotManifest.read(snapshot_uri)
    version = str(champion.version)
    ab_test = record is not None and record.ab_test and record.version == version
    if record is not None and record.ab_test and not ab_test:
        print(f"A/B record is for v{record.version}, not champion v{version}: no A/B arm")
    return PinnedChampion(
        **trained_on(snapshot).model_dump(),
        model_name=model_name,
        version=version,
        run_id=champion.run_id,
        snapshot_uri=snapshot_uri,
        deploy_mode=AB_TEST if ab_test else FULL,
        ab_challenger_share=record.challenger_share if ab_test else 0.0,
        challenger_version=(record.challenger_version or "") if ab_test else "",
        score_date=score_date,
    )


def current_champion(settings: Settings) -> Any:
    """The ``@champion`` ModelVersion; ChampionUnavailable before the first promotion."""
    name = settings.registered_model_name
    champion = version_by_alias(registry.client(settings.mlflow_tracking_uri), name, CHAMPION)
    if champion is None:
        raise ChampionUnavailable(f"no @{CHAMPION} version of {name!r}: run ml_model_training first")
    return champion


def resolve_champion(score_date: str, features_table: str | None = None,
                     settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    name = settings.registered_model_name
    record = deployment.read_deployment(settings.artifact_root, name, CHAMPION)
    pinned = pin(current_champion(settings), record, model_name=name, score_date=score_date)
    check_source(pinned, f"{name} v{pinned.version}", features_table)
    print(f"scoring {score_date} with {pinned.model_dump()}")
    return pinned.model_dump()


def champion_trained_on(features_table: str | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """What the serving champion learnt and from what (for monitoring: the realised labels' type and columns)."""
    settings = settings or load_settings()
    name = settings.registered_model_name
    champion = current_champion(settings)
    found = trained_on(SnapshotManifest.read(training_snapshot_uri(champion, name)))
    check_source(found, f"{name} v{champion.version}", features_table)
    print(f"champion v{champion.version} learnt {found.model_dump()}")
    return found.model_dump()

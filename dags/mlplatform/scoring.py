"""The batch prediction DAG's Airflow-side task: pin the run to one concrete model version.

``resolve_champion`` looks up ``@champion``, its training snapshot (the features to build) and the A/B
deployment it serves; every step after it reads these pinned values, so a promotion during the run cannot
mix two models in one day's predictions.
"""

from __future__ import annotations

from typing import Any

from mlcontract.errors import PipelineError
from mlcontract.names import AB_TEST, CHAMPION, DEFAULT_MODEL_NAME, FULL
from mlcontract.registry import version_by_alias
from pydantic import BaseModel, ConfigDict

from mlplatform import deployment, registry
from mlplatform.deployment import Deployment
from mlplatform.params import SAMPLE_DATE
from mlplatform.settings import Settings, load_settings

SNAPSHOT_TAG = "snapshot_uri"  # set on every registered version by the trainer's train step


class ChampionUnavailable(PipelineError):
    """No champion to score with, or one whose training features are unknown."""


class PinnedChampion(BaseModel):
    """What a batch prediction run scores with (pushed as one XCom per field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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


def pin(champion: Any, record: Deployment | None, *, model_name: str, score_date: str) -> PinnedChampion:
    """Pin ``champion`` (an MLflow ModelVersion) and, when its deployment is an A/B test, the challenger arm."""
    snapshot_uri = (champion.tags or {}).get(SNAPSHOT_TAG)
    if not snapshot_uri:
        raise ChampionUnavailable(
            f"{model_name} v{champion.version} has no {SNAPSHOT_TAG!r} tag: its training features are unknown"
        )
    version = str(champion.version)
    ab_test = record is not None and record.ab_test and record.version == version
    if record is not None and record.ab_test and not ab_test:
        print(f"A/B record is for v{record.version}, not champion v{version}: no A/B arm")
    return PinnedChampion(
        model_name=model_name,
        version=version,
        run_id=champion.run_id,
        snapshot_uri=snapshot_uri,
        deploy_mode=AB_TEST if ab_test else FULL,
        ab_challenger_share=record.challenger_share if ab_test else 0.0,
        challenger_version=(record.challenger_version or "") if ab_test else "",
        score_date=score_date,
    )


def resolve_champion(score_date: str, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or load_settings()
    name = settings.registered_model_name
    champion = version_by_alias(registry.client(settings.mlflow_tracking_uri), name, CHAMPION)
    if champion is None:
        raise ChampionUnavailable(f"no @{CHAMPION} version of {name!r} to score with: run ml_model_training first")
    record = deployment.read_deployment(settings.artifact_root, name, CHAMPION)
    pinned = pin(champion, record, model_name=name, score_date=score_date).model_dump()
    print(f"scoring {score_date} with {pinned}")
    return pinned

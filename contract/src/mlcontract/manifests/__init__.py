"""One pydantic model per step manifest, written and read by the same class."""

from mlcontract.manifests.base import Manifest
from mlcontract.manifests.features import (
    BuildManifest,
    ExtractManifest,
    GateFailure,
    GateManifest,
    LabelsManifest,
    PredictionsManifest,
    PublishManifest,
    ScoringBuildManifest,
    ScoringExtractManifest,
    SeedManifest,
    SnapshotManifest,
)
from mlcontract.manifests.trainer import (
    ChampionFeaturesManifest,
    EvaluateManifest,
    ModelEvaluation,
    MonitorManifest,
    ScoreManifest,
    TrainManifest,
    TrialManifest,
)

__all__ = [
    "BuildManifest", "ChampionFeaturesManifest", "EvaluateManifest", "ExtractManifest", "GateFailure",
    "GateManifest", "LabelsManifest",
    "Manifest", "ModelEvaluation", "MonitorManifest", "PredictionsManifest", "PublishManifest",
    "ScoreManifest", "ScoringBuildManifest", "ScoringExtractManifest", "SeedManifest", "SnapshotManifest",
    "TrainManifest", "TrialManifest",
]

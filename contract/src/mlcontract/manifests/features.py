"""Manifests of the features image's steps (see docs/steps.md for what each step writes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mlcontract.manifests.base import Manifest

Bounds = tuple[float | None, float | None]


class SeedManifest(Manifest):
    """The demo data generator's report: sizes, label rate and the oracle metric of the data it wrote."""

    step: Literal["seed"] = "seed"
    report: dict[str, Any]


class ExtractedData(Manifest):
    """What both extracts write: streamed event parts, their content hash and the source they came from."""

    rows: dict[str, int]
    parts: int
    content_hash: str
    source: dict[str, Any]
    snapshots: list[str]
    # events: timestamped events (features computed from them); feature_table: a ready-made feature table,
    # whose feature columns travel as extra columns of the spine (labels.parquet / spine.parquet)
    kind: Literal["events", "feature_table"] = "events"
    # canonical column -> the user's own column name, so that messages speak the user's terms
    columns: dict[str, str] = {}


class ExtractManifest(ExtractedData):
    """``extract``: ``events/part-*.parquet``, ``labels.parquet`` and optionally ``entities.parquet``."""

    step: Literal["extract"] = "extract"
    cutoff: str | None = None


class ScoringExtractManifest(ExtractedData):
    """``extract-scoring``: ``events/``, ``spine.parquet`` (entity_id, snapshot_ts = as_of), entities."""

    step: Literal["extract-scoring"] = "extract-scoring"
    as_of: str
    score_date: str


class LabelsManifest(Manifest):
    """``extract-labels``: the realised labels at one snapshot date (``labels.parquet``; may be empty)."""

    step: Literal["extract-labels"] = "extract-labels"
    rows: dict[str, int]
    score_date: str
    source: dict[str, Any]
    # the label's type follows the task: binary 0/1 (Int8), multiclass the class as spelled (Utf8), regression Float64
    task: Literal["binary", "multiclass", "regression"] = "binary"
    # canonical column -> the user's own column name
    columns: dict[str, str] = {}


class GateFailure(BaseModel):
    """One failing expectation, in the user's terms: which dataset, column, what was seen and expected."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    expectation: str
    column: str | list[str] | None
    observed: Any = None
    details: str


class GateManifest(Manifest):
    """A data gate (``validate-raw``, ``validate-features``, ``validate-predictions``): GX results and verdict."""

    step: Literal["validate-raw", "validate-features", "validate-predictions"]
    results_uri: str
    success: bool
    failures: list[GateFailure]
    rows: dict[str, int]
    expectations: int
    validate_seconds: float | None = None
    measure_seconds: float | None = None
    input: str
    snapshot_uri: str | None = None
    feature_columns: list[str] | None = None
    spine: str | None = None


class SnapshotContents(Manifest):
    """What a feature snapshot holds: the feature columns with their declared bounds, the splits and their
    sizes, and the config that produced them. The snapshot's own manifest and the build step's carry it."""

    snapshot_hash: str
    feature_columns: list[str]
    feature_bounds: dict[str, Bounds] = {}
    rows: dict[str, int]
    label_rate: dict[str, float]  # binary: positive rate; multiclass: share of the most frequent class; regression: 0
    splits: dict[str, list[str]]
    feature_config: dict[str, Any]  # the feature spec (features.engineering.spec.FeatureSpec) as a dict
    task: Literal["binary", "multiclass", "regression"] = "binary"
    # multiclass: the class labels as the user's label column spells them; the stored label is the index
    classes: list[str] | None = None
    split_method: Literal["time", "entity"] = "time"
    split_seed: int | None = None
    # canonical column -> the user's own column name (from the extract)
    columns: dict[str, str] = {}


class SnapshotManifest(SnapshotContents):
    """The content-addressed feature snapshot's own manifest (``{root}/features/{hash}/manifest.json``).

    ``feature_bounds`` declares, per feature column, the range its definition guarantees (a count is never
    negative, a one-hot lies in [0, 1], a strict lower bound is the next float up); the features gate checks
    exactly these. ``feature_config`` holds the feature config alone, ``categories`` the vocabulary fitted
    on the training events: together they are what scoring needs to produce the same columns.
    """

    step: Literal["snapshot"] = "snapshot"
    categories: dict[str, list[str]]
    code_version: str
    build_seconds: float | None = None
    # what a reuse verifies: the extract content it was built from, and the sha256 of its split files
    extract_content_hash: str | None = None
    content_hash: str | None = None


class BuildManifest(SnapshotContents):
    """``build``: where the snapshot is (reused or built), and what it holds (copied from its manifest)."""

    step: Literal["build"] = "build"
    snapshot_uri: str
    reused: bool
    extract: str
    extract_content_hash: str
    source: dict[str, Any] | None = None


class ScoringBuildManifest(Manifest):
    """``build-scoring``: features of the scoring spine with the training snapshot's config and columns."""

    step: Literal["build-scoring"] = "build-scoring"
    rows: dict[str, int]
    feature_columns: list[str]
    reference_snapshot_uri: str
    feature_config_hash: str
    extract: str
    extract_content_hash: str
    as_of: str
    score_date: str
    content_hash: str


class PredictionsManifest(Manifest):
    """A score date's published predictions (``{root}/predictions/{model}/{date}/manifest.json``)."""

    step: Literal["predictions"] = "predictions"
    table: str
    rows: dict[str, int]
    model_name: str
    model_version: str
    alias: str | None = None
    versions: dict[str, str] = {}
    score_date: str
    dag_run_id: str | None = None
    reference_snapshot_uri: str | None = None
    feature_columns: list[str] | None = None
    content_hash: str


class PublishManifest(PredictionsManifest):
    """``publish-predictions``: the published date's manifest plus where it was published."""

    step: Literal["publish-predictions"] = "publish-predictions"  # type: ignore[assignment]
    published_uri: str

"""Reading a feature snapshot: the `features build` step's manifest, then its train/valid/test splits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from mlcontract import storage
from mlcontract.errors import StepInputError
from mlcontract.manifests import BuildManifest
from mlcontract.names import ENTITY, LABEL, SNAPSHOT, SPLITS

log = logging.getLogger(__name__)

KEY_COLUMNS = (ENTITY, SNAPSHOT)


@dataclass(frozen=True)
class Split:
    name: str
    frame: pl.DataFrame  # key columns, label and features, as stored

    def features(self, columns: list[str]) -> np.ndarray:
        """Features as float32 (xgboost's native type); nulls become NaN, which xgboost treats as missing."""
        return self.frame.select(pl.col(columns).cast(pl.Float32)).to_numpy()

    @property
    def label(self) -> np.ndarray:
        return self.frame[LABEL].cast(pl.Float32).to_numpy()

    def __len__(self) -> int:
        return self.frame.height


@dataclass(frozen=True)
class Snapshot:
    features_dir: str
    build: BuildManifest
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def snapshot_uri(self) -> str:
        return self.build.snapshot_uri

    @property
    def snapshot_hash(self) -> str:
        return self.build.snapshot_hash

    @property
    def feature_columns(self) -> list[str]:
        return self.build.feature_columns

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]


def load_snapshot(features_dir: str, splits: tuple[str, ...] = SPLITS) -> Snapshot:
    """Read the build step's manifest in ``features_dir`` and load the named splits of its snapshot.

    Raises :class:`~mlcontract.errors.StepInputError` naming the file or column when the snapshot is not
    what the contract says.
    """
    build = BuildManifest.read(features_dir)
    if not build.feature_columns:
        raise StepInputError(f"{features_dir}: build manifest lists no feature_columns")
    snapshot = Snapshot(features_dir=features_dir, build=build)
    for name in splits:
        snapshot.splits[name] = _read_split(snapshot, name)
    log.info(
        "snapshot %s: %s rows, %d features",
        snapshot.snapshot_hash[:12],
        ", ".join(f"{name} {len(split):,}" for name, split in snapshot.splits.items()),
        len(snapshot.feature_columns),
    )
    return snapshot


def _read_split(snapshot: Snapshot, name: str) -> Split:
    uri = storage.join_uri(snapshot.snapshot_uri, f"{name}.parquet")
    if not storage.exists(uri):
        raise StepInputError(f"split {name!r} not found: {uri}")
    frame = storage.read_parquet(uri)
    required = [*KEY_COLUMNS, LABEL, *snapshot.feature_columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise StepInputError(f"{uri}: missing columns {missing}")
    if frame.height == 0:
        raise StepInputError(f"{uri}: split {name!r} is empty")
    labels = set(frame[LABEL].unique().to_list())
    if not labels <= {0, 1}:
        raise StepInputError(f"{uri}: column {LABEL!r} must be 0/1, found {sorted(labels, key=str)[:5]}")
    return Split(name, frame.select(required))

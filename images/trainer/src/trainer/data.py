"""Reading a feature snapshot: the `features build` step's manifest, then its train/valid/test splits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from features import io

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
KEY_COLUMNS = ("entity_id", "snapshot_ts")
LABEL = "label"


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
    snapshot_uri: str
    snapshot_hash: str
    feature_columns: list[str]
    build_manifest: dict[str, Any]
    splits: dict[str, Split] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]


def load_snapshot(features_dir: str, splits: tuple[str, ...] = SPLITS) -> Snapshot:
    """Read the build step's manifest in ``features_dir`` and load the named splits of its snapshot.

    Raises ``SystemExit`` naming the file or column when the snapshot is not what the contract says.
    """
    manifest = io.read_manifest(features_dir)
    missing_keys = [k for k in ("snapshot_uri", "snapshot_hash", "feature_columns") if k not in manifest]
    if missing_keys:
        raise SystemExit(f"{features_dir}: build manifest lacks {missing_keys}")
    feature_columns = list(manifest["feature_columns"])
    if not feature_columns:
        raise SystemExit(f"{features_dir}: build manifest lists no feature_columns")
    snapshot = Snapshot(
        features_dir=features_dir,
        snapshot_uri=manifest["snapshot_uri"],
        snapshot_hash=manifest["snapshot_hash"],
        feature_columns=feature_columns,
        build_manifest=manifest,
    )
    for name in splits:
        snapshot.splits[name] = _read_split(snapshot, name)
    log.info(
        "snapshot %s: %s rows, %d features",
        snapshot.snapshot_hash[:12],
        ", ".join(f"{name} {len(split):,}" for name, split in snapshot.splits.items()),
        len(feature_columns),
    )
    return snapshot


def _read_split(snapshot: Snapshot, name: str) -> Split:
    uri = io.join_uri(snapshot.snapshot_uri, f"{name}.parquet")
    if not io.exists(uri):
        raise SystemExit(f"split {name!r} not found: {uri}")
    fs, path = io.filesystem(uri)
    with fs.open(path, "rb") as handle:
        frame = pl.read_parquet(handle)
    required = [*KEY_COLUMNS, LABEL, *snapshot.feature_columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SystemExit(f"{uri}: missing columns {missing}")
    if frame.height == 0:
        raise SystemExit(f"{uri}: split {name!r} is empty")
    labels = set(frame[LABEL].unique().to_list())
    if not labels <= {0, 1}:
        raise SystemExit(f"{uri}: column 'label' must be 0/1, found {sorted(labels, key=str)[:5]}")
    return Split(name, frame.select(required))

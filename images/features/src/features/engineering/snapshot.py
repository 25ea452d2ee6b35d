"""``build``: the content-addressed feature snapshot of an extract, split by time.

The snapshot lives at ``{snapshot_root}/{hash}`` where the hash covers the extract's content, the feature
config and :data:`~features.engineering.compute.FEATURE_CODE_VERSION`: the same inputs reuse the snapshot that
exists. Its :class:`~mlcontract.manifests.SnapshotManifest` declares each feature's range (what the
features gate checks) and the category vocabulary (what scoring reuses).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import polars as pl
from mlcontract import storage
from mlcontract.manifests import BuildManifest, ExtractManifest, SnapshotManifest
from mlcontract.names import ENTITIES_FILE, ENTITY, EVENTS_DIR, LABEL, LABELS_FILE, SNAPSHOT, SPLITS

from features.engineering.compute import (
    FEATURE_CODE_VERSION,
    FeatureConfig,
    compute_features,
    feature_bounds,
    feature_columns,
    fit_categories,
)
from features.errors import BuildError

log = logging.getLogger(__name__)


def scan_extract(extract_dir: str) -> tuple[pl.LazyFrame, pl.LazyFrame | None]:
    """Lazy frames over an extract's events and (when it has them) entities, in the canonical layout."""
    events = storage.scan_parquet(storage.join_uri(extract_dir, EVENTS_DIR, "*.parquet"))
    entities_uri = storage.join_uri(extract_dir, ENTITIES_FILE)
    return events, storage.scan_parquet(entities_uri) if storage.exists(entities_uri) else None


def split_dates(snapshot_dates: Sequence[Any]) -> dict[str, list[Any]]:
    """Time-based split: the latest snapshot date is test, the one before valid, all earlier ones train."""
    dates = sorted(set(snapshot_dates))
    if len(dates) < 3:
        raise BuildError(
            f"the labels hold {len(dates)} snapshot date(s) {[str(d) for d in dates]}: a time-based "
            "train/valid/test split needs at least 3 (extract more history or more snapshots)"
        )
    return {"train": dates[:-2], "valid": [dates[-2]], "test": [dates[-1]]}


def snapshot_hash_of(content_hash: str, config: FeatureConfig) -> str:
    return storage.hash_json({"extract": content_hash, "config": config.to_dict(), "code": FEATURE_CODE_VERSION})


def build_features(
    extract_dir: str, out_dir: str, snapshot_root: str, config: FeatureConfig | None = None
) -> BuildManifest:
    """Build (or reuse) the content-addressed feature snapshot of an extract; write the step manifest."""
    started = time.perf_counter()
    config = config or FeatureConfig()
    extract = ExtractManifest.read(extract_dir)
    snapshot_hash = snapshot_hash_of(extract.content_hash, config)
    snapshot_uri = storage.join_uri(snapshot_root, snapshot_hash)

    if SnapshotManifest.exists(snapshot_uri):
        snapshot = SnapshotManifest.read(snapshot_uri)
        reused = True
        log.info("feature snapshot %s already built: reusing %s", snapshot_hash, snapshot_uri)
    else:
        snapshot = build_snapshot(extract_dir, snapshot_uri, snapshot_hash, config)
        reused = False

    manifest = BuildManifest(
        outputs={split: storage.join_uri(snapshot_uri, f"{split}.parquet") for split in SPLITS},
        snapshot_uri=snapshot_uri,
        snapshot_hash=snapshot_hash,
        reused=reused,
        extract=extract_dir,
        extract_content_hash=extract.content_hash,
        source=extract.source,
        feature_columns=snapshot.feature_columns,
        feature_bounds=snapshot.feature_bounds,
        rows=snapshot.rows,
        label_rate=snapshot.label_rate,
        splits=snapshot.splits,
        feature_config=snapshot.feature_config,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest


def build_snapshot(extract_dir: str, snapshot_uri: str, snapshot_hash: str, config: FeatureConfig) -> SnapshotManifest:
    """Compute the features of the labels spine, split them by time and publish the snapshot at once."""
    started = time.perf_counter()
    events, entities = scan_extract(extract_dir)
    spine = storage.read_parquet(storage.join_uri(extract_dir, LABELS_FILE)).select(
        pl.col(ENTITY).cast(pl.String), pl.col(SNAPSHOT).cast(pl.Datetime("us")), pl.col(LABEL).cast(pl.Int8)
    )
    splits = split_dates(spine[SNAPSHOT].dt.date().unique().to_list())
    log.info("%s label rows over %d snapshot dates", f"{spine.height:,}", sum(map(len, splits.values())))

    categories = fit_categories(events, entities, config, before=spine[SNAPSHOT].max())
    log.info("category vocabulary %s in %.1f s", {k: len(v) for k, v in categories.items()},
             time.perf_counter() - started)
    # the events are streamed inside compute_features; what is left to collect is in memory already
    table = compute_features(events, spine.lazy(), entities, config, categories).collect(engine="in-memory")
    columns = feature_columns(table)
    log.info("computed %d features for %s rows in %.1f s", len(columns), f"{table.height:,}",
             time.perf_counter() - started)

    # rows are sorted by snapshot time, so each split is a contiguous (zero-copy) slice
    days = table[SNAPSHOT].dt.date()
    n_train = int((days <= splits["train"][-1]).sum())
    n_valid = int((days == splits["valid"][0]).sum())
    parts = {
        "train": table.slice(0, n_train),
        "valid": table.slice(n_train, n_valid),
        "test": table.slice(n_train + n_valid),
    }
    bounds = feature_bounds(config, categories, entities.collect_schema() if entities is not None else None)
    snapshot = SnapshotManifest(
        outputs={name: storage.join_uri(snapshot_uri, f"{name}.parquet") for name in parts},
        snapshot_hash=snapshot_hash,
        feature_columns=columns,
        feature_bounds={column: bounds[column] for column in columns},
        rows={name: part.height for name, part in parts.items()},
        label_rate={name: float(part[LABEL].mean()) if part.height else 0.0 for name, part in parts.items()},
        splits={name: [d.isoformat() for d in days] for name, days in splits.items()},
        feature_config=config.to_dict(),
        categories=categories,
        code_version=FEATURE_CODE_VERSION,
        build_seconds=round(time.perf_counter() - started, 3),
    )
    # the files and the manifest appear together; a snapshot completed concurrently (same hash, same
    # content) is kept
    with storage.StagedDirectory(snapshot_uri, keep_complete=True) as staged:
        for name, part in parts.items():
            storage.write_parquet(storage.join_uri(staged.uri, f"{name}.parquet"), part)
        snapshot.write(staged.uri)
    log.info("wrote feature snapshot %s (%s rows) in %.1f s", snapshot_uri, snapshot.rows,
             time.perf_counter() - started)
    return snapshot

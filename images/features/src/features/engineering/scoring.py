"""``build-scoring``: features of the scoring spine with the training code and the training snapshot's
feature spec, category vocabulary and column list, so that serving cannot drift from training. The
columns of a ready-made feature table (in ``spine.parquet``) are encoded with the same spec and
vocabulary. A column the model was trained on that cannot be produced is an error, never a silent default.
"""

from __future__ import annotations

import logging
import time

from mlcontract import storage
from mlcontract.errors import MissingManifest
from mlcontract.manifests import ScoringBuildManifest, ScoringExtractManifest, SnapshotManifest
from mlcontract.names import ENTITY, FEATURES_FILE, SNAPSHOT

from features.engineering.compute import compute_feature_parts, feature_columns
from features.engineering.snapshot import prepare_spec, scan_extract
from features.engineering.spec import parse_spec
from features.errors import ScoringError

log = logging.getLogger(__name__)


def reference_snapshot(reference_snapshot_uri: str) -> SnapshotManifest:
    """The manifest of the model's training snapshot (its feature config, vocabulary and columns)."""
    try:
        return SnapshotManifest.read(reference_snapshot_uri)
    except MissingManifest:
        raise ScoringError(f"reference snapshot {reference_snapshot_uri!r} has no manifest.json") from None


def build_scoring(extract_dir: str, out_dir: str, reference_snapshot_uri: str) -> ScoringBuildManifest:
    """Features of the spine with the training code and the training snapshot's columns."""
    started = time.perf_counter()
    extract = ScoringExtractManifest.read(extract_dir)
    reference = reference_snapshot(reference_snapshot_uri)
    spec = parse_spec(reference.feature_config, f"reference snapshot {reference_snapshot_uri!r}: its feature spec")
    columns = reference.feature_columns
    events, entities = scan_extract(extract_dir, extract.kind)
    spine = storage.scan_parquet(extract.output("spine"))
    spec = prepare_spec(spec, events, entities, spine, extract)  # checks the scoring data against the spec
    # computed per range of entities (bounded memory while aggregating the events), then held: one row per entity
    with compute_feature_parts(events, spine, entities, spec, reference.categories) as parts:
        table = parts.collect()

    produced = feature_columns(table)
    missing = [c for c in columns if c not in produced]
    if missing:
        raise ScoringError(
            f"the scoring data cannot produce {len(missing)} feature column(s) the model was trained on: "
            f"{missing[:20]} (check the events/entities source columns against the training source)"
        )
    extra = [c for c in produced if c not in columns]
    if extra:
        log.warning("dropping %d feature column(s) the model was not trained on: %s", len(extra), extra[:20])
    table = table.select(ENTITY, SNAPSHOT, *columns).sort(ENTITY)
    features_uri = storage.join_uri(out_dir, FEATURES_FILE)
    storage.write_parquet(features_uri, table)
    log.info("computed %d features for %s entities in %.1f s", len(columns), f"{table.height:,}",
             time.perf_counter() - started)
    manifest = ScoringBuildManifest(
        outputs={"features": features_uri},
        rows={"features": table.height},
        feature_columns=columns,
        reference_snapshot_uri=reference_snapshot_uri,
        feature_config_hash=storage.hash_json({**reference.feature_config, "categories": reference.categories}),
        extract=extract_dir,
        extract_content_hash=extract.content_hash,
        as_of=extract.as_of,
        score_date=extract.score_date,
        content_hash=storage.hash_files([features_uri]),
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest

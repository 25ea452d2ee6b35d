"""``build-champion-features``: the champion's own features on the challenger's test rows (a fair comparison).

A champion is judged against a challenger on the same test entities and snapshot dates, each with the
features it was trained on: the champion's are rebuilt from this run's extract with its training snapshot's
feature spec, category vocabulary and column list (the scoring path's recipe, :mod:`features.engineering.scoring`).
A new category value, a dropped one or an extra column in the data therefore never makes the champion
"not comparable". Only what truly cannot be done is recorded as not comparable, with the reason: the
champion's training snapshot is gone, it predicts another task or other classes, or this extract lacks a
source column its spec reads. The promotion decision then refuses promotion unless a Param allows it.
"""

from __future__ import annotations

import logging
import time

import polars as pl
from mlcontract import storage
from mlcontract.errors import ManifestError, PipelineError
from mlcontract.manifests import BuildManifest, ChampionFeaturesManifest, ExtractManifest, SnapshotManifest
from mlcontract.names import ENTITY, FEATURES_FILE, MULTICLASS, SNAPSHOT

from features.engineering.compute import compute_features, feature_columns
from features.engineering.snapshot import prepare_spec, read_spine, scan_extract
from features.engineering.spec import parse_spec

log = logging.getLogger(__name__)

KEYS = [ENTITY, SNAPSHOT]


class Incomparable(Exception):
    """Why the champion's features cannot be made for these rows (recorded, never raised to the user)."""


def build_champion_features(
    build_dir: str, out_dir: str, model_name: str, champion_version: str | None, reference_snapshot_uri: str | None
) -> ChampionFeaturesManifest:
    """The champion's features on the test rows of the challenger's snapshot (``build_dir``: its build step)."""
    started = time.perf_counter()
    build = BuildManifest.read(build_dir)
    fields = {"model_name": model_name, "snapshot_hash": build.snapshot_hash,
              "champion_version": champion_version or None, "reference_snapshot_uri": reference_snapshot_uri or None}
    if not champion_version:
        log.info("no champion of %s yet: nothing to rebuild", model_name)
        manifest = ChampionFeaturesManifest(**fields, reason="no champion")
    elif reference_snapshot_uri and reference_snapshot_uri.rstrip("/") == build.snapshot_uri.rstrip("/"):
        log.info("champion v%s was trained on this very snapshot: its test split is the same", champion_version)
        manifest = ChampionFeaturesManifest(
            **fields, same_snapshot=True, comparable=True, rows=build.rows.get("test", 0),
            feature_columns=build.feature_columns, outputs={"features": build.output("test")},
        )
    else:
        try:
            table, columns = champion_features(build, champion_version, reference_snapshot_uri)
        except Incomparable as why:
            log.warning("champion v%s cannot be compared on this test set: %s", champion_version, why)
            manifest = ChampionFeaturesManifest(**fields, reason=str(why))
        else:
            features_uri = storage.join_uri(out_dir, FEATURES_FILE)
            storage.write_parquet(features_uri, table)
            log.info("rebuilt %d feature columns of champion v%s for %s test rows", len(columns), champion_version,
                     f"{table.height:,}")
            manifest = ChampionFeaturesManifest(
                **fields, comparable=True, rows=table.height, feature_columns=columns,
                outputs={"features": features_uri},
            )
    manifest.seconds = round(time.perf_counter() - started, 3)
    manifest.write(out_dir)
    return manifest


def champion_features(
    build: BuildManifest, version: str, reference_snapshot_uri: str | None
) -> tuple[pl.DataFrame, list[str]]:
    """(keys + the champion's columns for each test row, those columns); Incomparable when impossible."""
    if not reference_snapshot_uri:
        raise Incomparable(f"champion v{version} records no training snapshot (no 'snapshot_uri' tag)")
    try:
        reference = SnapshotManifest.read(reference_snapshot_uri)
    except (ManifestError, OSError) as error:
        raise Incomparable(f"its training snapshot {reference_snapshot_uri} is gone or unreadable ({error})") from None
    if reference.task != build.task:
        raise Incomparable(f"it is a {reference.task} model, but this snapshot is {build.task}")
    if build.task == MULTICLASS and reference.classes != build.classes:
        raise Incomparable(f"it predicts the classes {reference.classes}, but this snapshot has {build.classes}")

    extract = ExtractManifest.read(build.extract)
    test_keys = storage.read_parquet(build.output("test")).select(
        pl.col(ENTITY).cast(pl.String), pl.col(SNAPSHOT).cast(pl.Datetime("us"))
    )
    spine = read_spine(build.extract).join(test_keys, on=KEYS, how="semi")
    events, entities = scan_extract(build.extract, extract.kind)
    columns = reference.feature_columns
    try:
        spec = parse_spec(reference.feature_config, f"champion's training snapshot {reference_snapshot_uri}")
        spec = prepare_spec(spec, events, entities, spine.lazy(), extract)
        table = compute_features(events, spine.lazy(), entities, spec, reference.categories).collect(
            engine="in-memory"
        )
    except (PipelineError, pl.exceptions.PolarsError) as error:
        raise Incomparable(f"its feature spec cannot be computed from this extract: {error}") from None
    missing = [c for c in columns if c not in feature_columns(table)]
    if missing:
        raise Incomparable(f"this extract cannot produce {len(missing)} of its feature columns: {missing[:20]}")
    table = test_keys.join(table.select(*KEYS, *columns), on=KEYS, how="left", maintain_order="left")
    if table.height != test_keys.height:
        raise Incomparable(f"the test rows are not unique by entity and snapshot ({table.height} != {test_keys.height})")
    return table, columns

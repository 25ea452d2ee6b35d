"""``build``: the content-addressed feature snapshot of an extract, split by time or by entity.

The snapshot lives at ``{snapshot_root}/{hash}`` where the hash covers the extract's content, the feature
spec (or "inferred": inference is a function of the extract's content), the task, the resolved split
method (and its seed for an entity split) and :data:`~features.engineering.compute.FEATURE_CODE_VERSION`:
the same inputs reuse the snapshot that exists, once verified: the extract's files must be those its manifest
describes (a re-extract killed half-way leaves new files beside the old manifest: nothing is built from
them), and a snapshot is reused only when it records that extract content and its files still hash to what
it recorded; otherwise it is rebuilt in place. Its :class:`~mlcontract.manifests.SnapshotManifest`
holds the spec, each feature's range (what the features gate checks), the category vocabulary (what
scoring reuses), the task with its classes, the split and the user's column names.
"""

from __future__ import annotations

import logging
import time

import polars as pl
from mlcontract import storage
from mlcontract.errors import PipelineError
from mlcontract.manifests import BuildManifest, ExtractManifest, Manifest, SnapshotManifest
from mlcontract.manifests.features import ExtractedData, SnapshotContents
from mlcontract.names import (
    AUTO_SPLIT,
    BINARY,
    ENTITIES_FILE,
    ENTITY,
    ENTITY_SPLIT,
    EVENTS_DIR,
    FEATURE_TABLE_SOURCE,
    LABEL,
    LABELS_FILE,
    SNAPSHOT,
    SPLITS,
)

from features.engineering.compute import (
    FEATURE_CODE_VERSION,
    compute_feature_parts,
    feature_bounds,
    fit_categories,
)
from features.engineering.spec import FeatureSpec, check_spec, infer_spec
from features.engineering.split import (
    SPLIT_COLUMN,
    check_split_classes,
    check_splits,
    encode_labels,
    entity_splits,
    label_rate,
    resolve_split,
    split_dates,
)
from features.errors import BuildError

log = logging.getLogger(__name__)


def scan_extract(extract_dir: str, kind: str = "events") -> tuple[pl.LazyFrame | None, pl.LazyFrame | None]:
    """Lazy frames over an extract's events and entities (None where it has none), canonical layout."""
    if kind == FEATURE_TABLE_SOURCE:  # a ready-made feature table: its columns travel in the spine
        return None, None
    events = storage.scan_parquet(storage.join_uri(extract_dir, EVENTS_DIR, "*.parquet"))
    entities_uri = storage.join_uri(extract_dir, ENTITIES_FILE)
    return events, storage.scan_parquet(entities_uri) if storage.exists(entities_uri) else None


def table_columns(extract: ExtractedData | None, spine_columns: list[str]) -> list[str]:
    """The feature columns a ready-made feature table carries in its spine (none for an events extract)."""
    if extract is None or extract.kind != FEATURE_TABLE_SOURCE:
        return []
    return [c for c in spine_columns if c not in (ENTITY, SNAPSHOT, LABEL)]


def prepare_spec(
    spec: FeatureSpec | None,
    events: pl.LazyFrame | None,
    entities: pl.LazyFrame | None,
    spine: pl.LazyFrame,
    extract: ExtractedData,
) -> FeatureSpec:
    """The given spec, or the inferred one, checked against the data (SpecError naming the user's column)."""
    spine_schema = spine.collect_schema()
    table = table_columns(extract, spine_schema.names())
    spec = spec or infer_spec(events, entities, spine, table)
    if events is None and not spec.events and spec.uses_events:
        # a feature table has no events: the event defaults (windows, recency, tenure) do not apply to it
        spec = spec.model_copy(update={"windows_days": [], "recency": False, "tenure": False, "ratios": []})
    check_spec(
        spec,
        events.collect_schema() if events is not None else None,
        entities.collect_schema() if entities is not None else None,
        pl.Schema({c: spine_schema[c] for c in table}) if table else None,
        extract.columns,
    )
    return spec


def snapshot_hash_of(
    content_hash: str, spec: FeatureSpec | None, task: str = BINARY, split: str = "time", seed: int | None = None
) -> str:
    return storage.hash_json({
        "extract": content_hash,
        "spec": spec.to_dict() if spec is not None else "inferred",
        "task": task,
        "split": split,
        "seed": seed if split == ENTITY_SPLIT else None,
        "code": FEATURE_CODE_VERSION,
    })


def extract_files(extract_dir: str, kind: str = "events") -> list[str]:
    """The files the build reads from an extract, in the order its ``content_hash`` covers them."""
    labels = storage.join_uri(extract_dir, LABELS_FILE)
    if kind == FEATURE_TABLE_SOURCE:
        return [labels]
    events = [uri for uri in storage.list_files(storage.join_uri(extract_dir, EVENTS_DIR))
              if uri.endswith(".parquet") and not uri.rsplit("/", 1)[-1].startswith(".")]
    entities = storage.join_uri(extract_dir, ENTITIES_FILE)
    return [*events, labels, *([entities] if storage.exists(entities) else [])]


def verify_extract(extract_dir: str, extract: ExtractedData) -> None:
    """The extract's files are those its manifest describes, else a BuildError: a snapshot is addressed by
    the manifest's content hash, so files of other content must never be built (or reused) under it."""
    found = storage.hash_files(extract_files(extract_dir, extract.kind))
    if found != extract.content_hash:
        raise BuildError(
            f"extract {extract_dir}: its files are not those its manifest describes (content hash {found[:12]}, "
            f"manifest {extract.content_hash[:12]}): the extract step was interrupted while rewriting them, or "
            "they were changed after it finished; rerun extract"
        )


def reusable_snapshot(snapshot_uri: str, extract_content_hash: str) -> SnapshotManifest | None:
    """The complete snapshot at its address when it is what the address promises: built from this extract
    content, its files as it wrote them. None when there is none, or it fails the check (it is rebuilt)."""
    if not SnapshotManifest.exists(snapshot_uri):
        return None
    try:
        snapshot = SnapshotManifest.read(snapshot_uri)
        files = [storage.join_uri(snapshot_uri, f"{name}.parquet") for name in SPLITS]
        found = storage.hash_files(files) if all(storage.exists(f) for f in files) else None
    except PipelineError as error:
        log.warning("feature snapshot %s is unreadable (%s): rebuilding it", snapshot_uri, error)
        return None
    if snapshot.extract_content_hash != extract_content_hash or found is None or found != snapshot.content_hash:
        log.warning("feature snapshot %s does not match its inputs (extract %s, files %s): rebuilding it",
                    snapshot_uri, snapshot.extract_content_hash == extract_content_hash,
                    "intact" if found is not None and found == snapshot.content_hash else "changed or missing")
        return None
    return snapshot


def read_spine(extract_dir: str) -> pl.DataFrame:
    return storage.read_parquet(storage.join_uri(extract_dir, LABELS_FILE)).with_columns(
        pl.col(ENTITY).cast(pl.String), pl.col(SNAPSHOT).cast(pl.Datetime("us"))
    )


def build_features(
    extract_dir: str,
    out_dir: str,
    snapshot_root: str,
    spec: FeatureSpec | None = None,
    task: str = BINARY,
    split: str = AUTO_SPLIT,
    split_seed: int = 42,
) -> BuildManifest:
    """Build (or reuse) the content-addressed feature snapshot of an extract; write the step manifest.

    ``spec`` None: inferred from the extract (:func:`features.engineering.spec.infer_spec`).
    """
    started = time.perf_counter()
    extract = ExtractManifest.read(extract_dir)
    storage.begin_rewrite(out_dir)
    verify_extract(extract_dir, extract)
    spine = read_spine(extract_dir)
    method = resolve_split(split, spine[SNAPSHOT].dt.date().n_unique())
    seed = split_seed if method == ENTITY_SPLIT else None
    snapshot_hash = snapshot_hash_of(extract.content_hash, spec, task, method, seed)
    snapshot_uri = storage.join_uri(snapshot_root, snapshot_hash)

    reusable = reusable_snapshot(snapshot_uri, extract.content_hash)
    if reusable is not None:
        snapshot, reused = reusable, True
        log.info("feature snapshot %s already built (verified): reusing %s", snapshot_hash, snapshot_uri)
    else:
        snapshot = build_snapshot(extract_dir, extract, spine, snapshot_uri, snapshot_hash, spec, task, method, seed,
                                  replace=SnapshotManifest.exists(snapshot_uri))
        reused = False

    contents = snapshot.model_dump(include=set(SnapshotContents.model_fields) - set(Manifest.model_fields))
    manifest = BuildManifest(
        **contents,
        outputs={split: storage.join_uri(snapshot_uri, f"{split}.parquet") for split in SPLITS},
        snapshot_uri=snapshot_uri,
        reused=reused,
        extract=extract_dir,
        extract_content_hash=extract.content_hash,
        source=extract.source,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest


def build_snapshot(
    extract_dir: str,
    extract: ExtractManifest,
    spine: pl.DataFrame,
    snapshot_uri: str,
    snapshot_hash: str,
    spec: FeatureSpec | None,
    task: str,
    method: str,
    seed: int | None,
    replace: bool = False,
) -> SnapshotManifest:
    """Compute the features of the labels spine, split them and publish the snapshot at once.

    ``replace``: a snapshot at the address failed its check and is replaced (else a complete one is kept).
    """
    started = time.perf_counter()
    events, entities = scan_extract(extract_dir, extract.kind)
    label, classes = encode_labels(spine[LABEL], task, extract.columns.get(LABEL, LABEL))
    spine = spine.with_columns(label)
    snapshot_column = extract.columns.get(SNAPSHOT, SNAPSHOT)
    dates = split_dates(spine[SNAPSHOT].dt.date().unique().to_list(), snapshot_column) if method == "time" else None
    log.info("%s label rows over %d snapshot dates, %s split", f"{spine.height:,}",
             spine[SNAPSHOT].dt.date().n_unique(), method)

    spec = prepare_spec(spec, events, entities, spine.lazy(), extract)
    categories = fit_categories(events, entities, spec, before=spine[SNAPSHOT].max(), spine=spine.lazy())
    log.info("feature spec %s; category vocabulary %s in %.1f s", spec.to_dict(),
             {k: len(v) for k, v in categories.items()}, time.perf_counter() - started)
    # which rows go to each split; the feature rows are one per spine row, so the split sizes and label
    # rates are the spine's
    if dates is not None:
        where = {name: pl.col(SNAPSHOT).dt.date().is_in(values) for name, values in dates.items()}
    else:
        assigned = entity_splits(spine, seed or 0, task)
        where = {name: pl.col(ENTITY).is_in(assigned.filter(pl.col(SPLIT_COLUMN) == name)[ENTITY].implode())
                 for name in SPLITS}
    parts = {name: spine.filter(condition) for name, condition in where.items()}
    splits = {name: sorted({d.isoformat() for d in part[SNAPSHOT].dt.date().unique()}) for name, part in parts.items()}
    check_splits({name: part.height for name, part in parts.items()}, method)
    check_split_classes({name: part[LABEL] for name, part in parts.items()}, task, extract.columns.get(LABEL, LABEL),
                        classes, splits if method == "time" else None)
    # bounded memory: computed per range of entities into a working directory, streamed into the splits
    table = compute_feature_parts(events, spine.lazy(), entities, spec, categories)
    columns = table.feature_columns
    log.info("computed %d features for %s rows in %.1f s", len(columns), f"{spine.height:,}",
             time.perf_counter() - started)
    entity_schema = entities.collect_schema() if entities is not None else None
    table_schema = pl.Schema({c: spine.schema[c] for c in spec.table_columns if c in spine.schema})
    bounds = feature_bounds(spec, categories, entity_schema, table_schema)
    snapshot = SnapshotManifest(
        outputs={name: storage.join_uri(snapshot_uri, f"{name}.parquet") for name in parts},
        snapshot_hash=snapshot_hash,
        feature_columns=columns,
        feature_bounds={column: bounds[column] for column in columns},
        rows={name: part.height for name, part in parts.items()},
        label_rate={name: label_rate(part[LABEL], task) for name, part in parts.items()},
        splits=splits,
        feature_config=spec.to_dict(),
        task=task,
        classes=classes,
        split_method=method,
        split_seed=seed,
        columns=extract.columns,
        categories=categories,
        code_version=FEATURE_CODE_VERSION,
        extract_content_hash=extract.content_hash,
        build_seconds=round(time.perf_counter() - started, 3),
    )
    # the files and the manifest appear together; a snapshot completed concurrently (same hash, same
    # content) is kept
    with table, storage.StagedDirectory(snapshot_uri, keep_complete=not replace) as staged:
        for name, condition in where.items():
            storage.write_parquet_stream(storage.join_uri(staged.uri, f"{name}.parquet"), table.frames(condition))
        snapshot.content_hash = storage.hash_files([storage.join_uri(staged.uri, f"{name}.parquet") for name in SPLITS])
        snapshot.write(staged.uri)
    log.info("wrote feature snapshot %s (%s rows) in %.1f s", snapshot_uri, snapshot.rows,
             time.perf_counter() - started)
    return snapshot

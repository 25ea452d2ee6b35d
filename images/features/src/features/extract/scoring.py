"""Batch scoring, the feature side: what to score on a date, its features, and publishing the predictions.

Three steps, each the scoring twin of a training step so that serving cannot drift from training:

- ``extract_scoring``: the entities to score on ``as_of`` (every entity with an event before it, plus the
  entity table's entities that signed up before it) as ``spine.parquet``, and their events strictly before
  ``as_of``, in the canonical layout of ``docs/steps.md``. It reuses the training extract's warehouse access,
  identifier checks, canonical column handling and streamed part writer.
- ``build_scoring``: features with the training code (``features.build.compute_features``) and the training
  snapshot's feature config, category vocabulary and column list; a column the model was trained on that
  cannot be produced is an error, never a silent default.
- ``publish_predictions``: the gated predictions (and the features they were scored on, for drift monitoring)
  to ``{ARTIFACT_ROOT}/predictions/{model_name}/{score_date}/`` and to a warehouse table, replacing that
  date's rows in one transaction so a rerun never duplicates.

The spine keeps the entity table as it is: a duplicated key there gives a duplicated spine row, hence a
duplicated prediction, which the output gate (:mod:`features.output_gate`) rejects before publishing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import sqlalchemy as sa

from features import io
from features.build import ENTITY, SNAPSHOT, FeatureConfig, compute_features, feature_columns
from features.extract import (
    DEFAULT_BATCH_ROWS,
    IDENTIFIER,
    ExtractError,
    check_identifiers,
    _Canonicaliser,
    _PartWriter,
    _require,
    _Warehouse,
    _write_single,
    mask_uri,
)

log = logging.getLogger(__name__)

SPINE_FILE = "spine.parquet"
FEATURES_FILE = "features.parquet"
PREDICTIONS_FILE = "predictions.parquet"
DEFAULT_PREDICTIONS_TABLE = "churn_predictions"
PREDICTION_COLUMNS = (
    "entity_id", "score_date", "score", "model_name", "model_version", "alias", "dag_run_id",
)


class ScoringError(ValueError):
    """Bad scoring input: the message names the column, option or file."""


# ------------------------------------------------------------------------------------------ extract-scoring


@dataclass(frozen=True)
class ScoringSource:
    """Where the entities to score and their events live (the training extract's options, minus labels)."""

    events_table: str | None = "events"
    events_query: str | None = None
    entities_table: str | None = "customers"
    entity_key: str = "customer_id"
    timestamp_column: str = "event_ts"
    signup_column: str | None = "signup_ts"

    def __post_init__(self) -> None:
        if bool(self.events_table) == bool(self.events_query):
            raise ExtractError("give exactly one of --events-table or --events-query")
        check_identifiers(
            self, ("events_table", "entities_table", "entity_key", "timestamp_column", "signup_column")
        )

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v}


def as_of_datetime(value: date | datetime | str) -> datetime:
    """The scoring instant: midnight (naive UTC) of a date, or the datetime itself."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day)
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def extract_scoring(
    warehouse_uri: str,
    out_dir: str,
    as_of: date | datetime,
    source: ScoringSource | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, Any]:
    """Write ``events/``, ``spine.parquet`` (entity_id, snapshot_ts = as_of) and ``entities.parquet``."""
    source = source or ScoringSource()
    started = time.perf_counter()
    as_of_ts = as_of_datetime(as_of)
    warehouse = _Warehouse(warehouse_uri)
    log.info("extracting entities to score on %s from %s", as_of_ts.isoformat(), mask_uri(warehouse_uri))
    key, ts = source.entity_key, source.timestamp_column
    options = {key: "--entity-key", ts: "--timestamp-column"}
    q = warehouse.quote
    try:
        events_rel = warehouse.relation("events", source.events_table, source.events_query)
        event_cols = warehouse.columns("events", events_rel)
        _require("events", event_cols, [key, ts], options)
        for canonical in ("entity_id", "event_ts"):
            if canonical in event_cols and canonical not in (key, ts):
                raise ExtractError(
                    f"events source already has a column named {canonical!r}; rename it in a query"
                )
        entities_rel = entity_cols = None
        if source.entities_table:
            entities_rel = warehouse.relation("entities", source.entities_table, None)
            entity_cols = warehouse.columns("entities", entities_rel)
            _require("entities", entity_cols, [key], options)
            if source.signup_column and source.signup_column not in entity_cols:
                raise ExtractError(
                    f"entities table {source.entities_table!r} has no column {source.signup_column!r} "
                    f"(from --signup-column; '' to take every entity); columns are: {', '.join(entity_cols)}"
                )

        # --- events strictly before as_of, streamed one part per batch (as the training extract) -------
        other = [c for c in event_cols if c not in (key, ts)]
        order = ", ".join(f"src.{q(c)}" for c in [key, ts, *other])
        events_sql = f"SELECT * FROM {events_rel} AS src WHERE src.{q(ts)} < :cutoff ORDER BY {order}"
        params = {"cutoff": warehouse.cutoff_param(as_of_ts)}
        renames = {key: "entity_id", ts: "event_ts"}
        to_events = _Canonicaliser(renames, {"event_ts"}, warehouse.is_sqlite, None)
        events_dir = io.join_uri(out_dir, "events")
        parts = _PartWriter(events_dir)
        event_rows = 0
        try:
            for keys, rows in warehouse.stream(events_sql, params, batch_rows):
                frame = to_events(keys, rows).filter(pl.col("event_ts") < as_of_ts)  # exact, after parsing
                if frame.height == 0:
                    continue
                parts.write(frame)
                event_rows += frame.height
                log.info("extracted %s rows (events)", f"{event_rows:,}")
            if not parts.names:
                parts.write(to_events([key, ts, *other], []))
            part_uris = parts.commit()
        except BaseException:
            parts.abort()
            raise

        outputs = {"events": events_dir}
        rows = {"events": event_rows, "entities": 0}
        hashed = list(part_uris)
        entities_uri = io.join_uri(out_dir, "entities.parquet")
        if entities_rel is not None:
            assert entity_cols is not None
            to_entities = _Canonicaliser({key: "entity_id"}, set(), warehouse.is_sqlite, None)
            order = ", ".join(f"src.{q(c)}" for c in [key, *[c for c in entity_cols if c != key]])
            entities_sql = f"SELECT * FROM {entities_rel} AS src ORDER BY {order}"
            rows["entities"] = _write_single(
                entities_uri, (to_entities(k, r) for k, r in warehouse.stream(entities_sql, {}, batch_rows))
            )
            outputs["entities"] = entities_uri
            hashed.append(entities_uri)
            log.info("extracted %s rows (entities)", f"{rows['entities']:,}")
        elif io.exists(entities_uri):  # stale from an earlier run of this step
            fs, path = io.filesystem(entities_uri)
            fs.rm(path)
    finally:
        warehouse.engine.dispose()

    # --- the spine: entities of the entity table (signed up before as_of) + other entities with events --
    event_entities = (
        pl.scan_parquet(_read_uri(events_dir) + "/*.parquet").select(pl.col(ENTITY).cast(pl.String)).unique()
        .collect(engine="streaming")
    )
    from_table = pl.DataFrame(schema={ENTITY: pl.String})
    if "entities" in outputs:
        entities = pl.read_parquet(_read_uri(entities_uri))
        if source.signup_column and entities.schema[source.signup_column].is_temporal():
            signup = pl.col(source.signup_column).cast(pl.Datetime("us"))
            entities = entities.filter(signup.is_null() | (signup < as_of_ts))
        from_table = entities.select(pl.col(ENTITY).cast(pl.String))
    only_events = event_entities.join(from_table.unique(), on=ENTITY, how="anti")
    spine = (
        pl.concat([from_table, only_events])
        .drop_nulls(ENTITY)
        .sort(ENTITY)
        .with_columns(pl.lit(as_of_ts, pl.Datetime("us")).alias(SNAPSHOT))
    )
    spine_uri = io.join_uri(out_dir, SPINE_FILE)
    _write_frame(spine_uri, spine)
    outputs["spine"] = spine_uri
    rows["spine"] = spine.height
    hashed.append(spine_uri)
    log.info(
        "spine: %s entities to score (%s from the entity table, %s more with events)",
        f"{spine.height:,}", f"{from_table.height:,}", f"{only_events.height:,}",
    )

    manifest = {
        "step": "extract-scoring",
        "outputs": outputs,
        "rows": rows,
        "parts": len(part_uris),
        "content_hash": io.hash_files(hashed),
        "as_of": as_of_ts.isoformat(),
        "score_date": as_of_ts.date().isoformat(),
        "source": source.describe(),
        "snapshots": [as_of_ts.isoformat()],
        "seconds": round(time.perf_counter() - started, 3),
    }
    io.write_manifest(out_dir, manifest)
    return manifest


# ------------------------------------------------------------------------------------------- build-scoring


def reference_features(reference_snapshot_uri: str) -> tuple[FeatureConfig, dict[str, list[str]], list[str]]:
    """Feature config, category vocabulary and ordered feature columns of the model's training snapshot."""
    manifest_uri = io.join_uri(reference_snapshot_uri, io.MANIFEST_NAME)
    if not io.exists(manifest_uri):
        raise ScoringError(f"reference snapshot {reference_snapshot_uri!r} has no manifest.json")
    snapshot = io.read_manifest(reference_snapshot_uri)
    missing = [k for k in ("feature_config", "feature_columns") if not snapshot.get(k)]
    if missing:
        raise ScoringError(f"reference snapshot manifest {manifest_uri} lacks {missing}")
    config_payload = dict(snapshot["feature_config"])
    categories = snapshot.get("categories") or config_payload.pop("categories", None)
    if categories is None:
        raise ScoringError(f"reference snapshot manifest {manifest_uri} has no 'categories' vocabulary")
    return FeatureConfig.from_dict(config_payload), categories, list(snapshot["feature_columns"])


def build_scoring(extract_dir: str, out_dir: str, reference_snapshot_uri: str) -> dict[str, Any]:
    """Features of the spine with the training code and the training snapshot's columns."""
    from features.build import scan_extract

    started = time.perf_counter()
    extract = io.read_manifest(extract_dir)
    if "spine" not in extract.get("outputs", {}):
        raise ScoringError(f"{extract_dir} is not an extract-scoring output (its manifest names no spine)")
    config, categories, columns = reference_features(reference_snapshot_uri)
    events, _, entities = scan_extract(extract_dir)
    spine = pl.scan_parquet(_read_uri(extract["outputs"]["spine"])).select(ENTITY, SNAPSHOT)
    table = compute_features(events, spine, entities, config, categories).collect(engine="in-memory")

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
    features_uri = io.join_uri(out_dir, FEATURES_FILE)
    _write_frame(features_uri, table)
    log.info("computed %d features for %s entities in %.1f s", len(columns), f"{table.height:,}",
             time.perf_counter() - started)
    manifest = {
        "step": "build-scoring",
        "outputs": {"features": features_uri},
        "rows": {"features": table.height},
        "feature_columns": columns,
        "reference_snapshot_uri": reference_snapshot_uri,
        "feature_config_hash": io.hash_json({**config.to_dict(), "categories": categories}),
        "extract": extract_dir,
        "extract_content_hash": extract["content_hash"],
        "as_of": extract["as_of"],
        "score_date": extract["score_date"],
        "content_hash": io.hash_files([features_uri]),
        "seconds": round(time.perf_counter() - started, 3),
    }
    io.write_manifest(out_dir, manifest)
    return manifest


# ------------------------------------------------------------------------------------- publish-predictions


def predictions_prefix(artifact_root: str, model_name: str, score_date: str) -> str:
    """Where a date's published predictions live (what the monitoring DAG reads)."""
    return io.join_uri(artifact_root, "predictions", model_name, score_date)


def predictions_table(name: str, metadata: sa.MetaData) -> sa.Table:
    if not IDENTIFIER.match(name):
        raise ScoringError(f"--table {name!r} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_.]*)")
    schema, _, table = name.rpartition(".")
    return sa.Table(
        table,
        metadata,
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("score_date", sa.Date, nullable=False),
        sa.Column("score", sa.Float(precision=53), nullable=False),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("alias", sa.Text, nullable=False),
        sa.Column("dag_run_id", sa.Text, nullable=False),
        sa.Index(f"ix_{table}_model_date", "model_name", "score_date"),
        schema=schema or None,
    )


def write_predictions_table(
    warehouse_uri: str, table_name: str, predictions: pl.DataFrame, batch_rows: int = 10_000
) -> dict[str, int]:
    """Replace the (model, date) rows of ``predictions`` in one transaction: delete, then insert."""
    keys = predictions.select("model_name", "score_date").unique()
    engine = sa.create_engine(warehouse_uri)
    table = predictions_table(table_name, sa.MetaData())
    try:
        with engine.begin() as conn:
            table.create(conn, checkfirst=True)
            deleted = 0
            for model_name, score_date in keys.iter_rows():
                deleted += conn.execute(
                    table.delete().where(table.c.model_name == model_name, table.c.score_date == score_date)
                ).rowcount
            for chunk in predictions.select(PREDICTION_COLUMNS).iter_slices(batch_rows):
                conn.execute(table.insert(), chunk.to_dicts())
    finally:
        engine.dispose()
    return {"deleted": int(deleted), "inserted": predictions.height}


def publish_predictions(
    predictions_dir: str, out_dir: str, warehouse_uri: str, artifact_root: str,
    table: str = DEFAULT_PREDICTIONS_TABLE,
) -> dict[str, Any]:
    """Publish gated predictions (and their features) to the artifact store and warehouse, idempotently."""
    started = time.perf_counter()
    scored = io.read_manifest(predictions_dir)
    predictions = _read_frame(scored["outputs"]["predictions"])
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ScoringError(f"{scored['outputs']['predictions']}: missing prediction columns {missing}")
    model_name, score_date = scored["model_name"], scored["score_date"]
    prefix = predictions_prefix(artifact_root, model_name, score_date)

    predictions_uri = io.join_uri(prefix, PREDICTIONS_FILE)
    features_uri = io.join_uri(prefix, FEATURES_FILE)
    _copy_atomic(scored["outputs"]["predictions"], predictions_uri)
    _copy_atomic(scored["outputs"]["features"], features_uri)
    counts = write_predictions_table(warehouse_uri, table, predictions)
    log.info("published %s predictions of %s for %s to %s (replaced %s rows)", f"{counts['inserted']:,}",
             model_name, score_date, table, f"{counts['deleted']:,}")

    published = {
        "step": "publish-predictions",
        "outputs": {"predictions": predictions_uri, "features": features_uri},
        "table": table,
        "rows": {"predictions": predictions.height, "replaced": counts["deleted"]},
        "model_name": model_name,
        "model_version": scored["model_version"],
        "alias": scored.get("alias"),
        "versions": scored.get("versions", {}),
        "score_date": score_date,
        "dag_run_id": scored.get("dag_run_id"),
        "reference_snapshot_uri": scored.get("reference_snapshot_uri"),
        "feature_columns": scored.get("feature_columns"),
        "content_hash": io.hash_files([predictions_uri, features_uri]),
    }
    # the date's own manifest, written last: its presence means the date's predictions are complete
    io.write_manifest(prefix, {**published, "step": "predictions"})
    manifest = {**published, "published_uri": prefix, "seconds": round(time.perf_counter() - started, 3)}
    io.write_manifest(out_dir, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------- storage


def _read_uri(uri: str) -> str:
    fs, path = io.filesystem(uri)
    return path if io.is_local(fs) else uri


def _read_frame(uri: str) -> pl.DataFrame:
    fs, path = io.filesystem(uri)
    with fs.open(path, "rb") as handle:
        return pl.read_parquet(handle)


def _write_frame(uri: str, frame: pl.DataFrame) -> None:
    """Write a parquet file atomically (temporary sibling + rename locally; one PUT on object stores)."""
    fs, path = io.filesystem(uri)
    if not io.is_local(fs):
        with fs.open(path, "wb") as handle:
            frame.write_parquet(handle, compression="zstd", statistics=True)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        frame.write_parquet(tmp, compression="zstd", statistics=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _copy_atomic(source_uri: str, target_uri: str) -> None:
    _write_frame(target_uri, _read_frame(source_uri))


"""``publish-predictions``: the gated predictions (and the features they were scored on, for drift
monitoring) to ``{ARTIFACT_ROOT}/predictions/{model_name}/{score_date}/`` and to a warehouse table,
replacing that date's rows in one transaction so that a rerun never duplicates.
"""

from __future__ import annotations

import logging
import time

import polars as pl
import sqlalchemy as sa
from mlcontract import layout, storage
from mlcontract.errors import SourceError
from mlcontract.manifests import PredictionsManifest, PublishManifest, ScoreManifest
from mlcontract.names import (
    DEFAULT_PREDICTIONS_TABLE,
    FEATURES_FILE,
    PREDICTED_CLASS,
    PREDICTION_COLUMNS,
    PREDICTIONS_FILE,
)
from mlcontract.source import check_identifier

from features.errors import ScoringError

log = logging.getLogger(__name__)

# what the published date's manifest says about the model that scored it, as the score step recorded it
CARRIED_FROM_SCORE = {
    "model_name", "model_version", "alias", "versions", "score_date", "dag_run_id", "reference_snapshot_uri",
    "feature_columns",
}


def predictions_table(name: str, metadata: sa.MetaData) -> sa.Table:
    try:
        check_identifier(name, "--table")
    except SourceError as error:
        raise ScoringError(str(error)) from None
    schema, _, table = name.rpartition(".")
    return sa.Table(
        table,
        metadata,
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("score_date", sa.Date, nullable=False),
        sa.Column("score", sa.Float(precision=53), nullable=False),
        sa.Column(PREDICTED_CLASS, sa.Text, nullable=True),  # null for regression
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("alias", sa.Text, nullable=False),
        sa.Column("dag_run_id", sa.Text, nullable=False),
        sa.Index(f"ix_{table}_model_date", "model_name", "score_date"),
        schema=schema or None,
    )


def add_missing_columns(conn: sa.Connection, table: sa.Table) -> None:
    """Add the nullable columns a table created by an older release lacks (``predicted_class``)."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(table.name, schema=table.schema)}
    for column in table.columns:
        if column.name not in present and column.nullable:
            name = conn.dialect.identifier_preparer.format_table(table)
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN {column.name} {kind}"))
            log.info("added column %s to %s", column.name, name)


def write_predictions_table(
    warehouse_uri: str, table_name: str, predictions: pl.DataFrame, batch_rows: int = 10_000
) -> dict[str, int]:
    """Replace the (model, date) rows of ``predictions`` in one transaction: delete, then insert."""
    keys = predictions.select("model_name", "score_date").unique()
    table = predictions_table(table_name, sa.MetaData())
    engine = sa.create_engine(warehouse_uri)
    try:
        with engine.begin() as conn:
            table.create(conn, checkfirst=True)
            add_missing_columns(conn, table)
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
    predictions_dir: str,
    out_dir: str,
    warehouse_uri: str,
    artifact_root: str,
    table: str = DEFAULT_PREDICTIONS_TABLE,
) -> PublishManifest:
    """Publish gated predictions (and their features) to the artifact store and warehouse, idempotently."""
    started = time.perf_counter()
    scored = ScoreManifest.read(predictions_dir)
    predictions = storage.read_parquet(scored.output("predictions"))
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ScoringError(f"{scored.output('predictions')}: missing prediction columns {missing}")
    prefix = layout.predictions_dir(artifact_root, scored.model_name, scored.score_date)
    predictions_uri = storage.join_uri(prefix, PREDICTIONS_FILE)
    features_uri = storage.join_uri(prefix, FEATURES_FILE)
    # the date's manifest goes first: a republish killed half-way leaves no old manifest beside new files
    storage.begin_rewrite(prefix)
    storage.begin_rewrite(out_dir)
    storage.copy_file(scored.output("predictions"), predictions_uri)
    storage.copy_file(scored.output("features"), features_uri)
    counts = write_predictions_table(warehouse_uri, table, predictions)
    log.info("published %s predictions of %s for %s to %s (replaced %s rows)", f"{counts['inserted']:,}",
             scored.model_name, scored.score_date, table, f"{counts['deleted']:,}")

    published = PredictionsManifest(
        outputs={"predictions": predictions_uri, "features": features_uri},
        table=table,
        rows={"predictions": predictions.height, "replaced": counts["deleted"]},
        content_hash=storage.hash_files([predictions_uri, features_uri]),
        **scored.model_dump(include=CARRIED_FROM_SCORE),
    )
    # the date's own manifest, written last: its presence means the date's predictions are complete
    published.write(prefix)
    manifest = PublishManifest(
        **published.model_dump(exclude={"step", "seconds"}),
        published_uri=prefix,
        seconds=round(time.perf_counter() - started, 3),
    )
    manifest.write(out_dir)
    return manifest

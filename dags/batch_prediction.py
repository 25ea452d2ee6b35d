"""
### batch_prediction

Daily churn scores with the registered **champion** (never "latest"):
resolve `@champion` (version, training snapshot, A/B share) → extract the entities to score and their events
before the score date → features with the training code and the **training snapshot's** columns (no
training/serving skew) → score → **gate** (GX on the predictions: one score per entity, probabilities,
sane distribution) → publish to `{ARTIFACT_ROOT}/predictions/{model}/{date}/` and the warehouse table,
replacing that date's rows in one transaction (a rerun never duplicates).

In deploy mode `ab_test` (the champion's deployment record), a stable hash of each entity id sends the
record's `challenger_share` of the entities to `@challenger`; each row records its alias and model version.
A failed gate fails the run and publishes nothing: yesterday's good rows stay as they were.

A champion trained on a ready-made feature table scores that table's rows instead (`features_table`; those
of the score date when the table has a snapshot column): its task, feature spec and columns come from its
training snapshot, so only the table is a Param.

Every compute step is a pod built by `mlplatform.steps`; steps pass small manifests, never data.
`score_date` empty means the run's own date (events strictly before its midnight, UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, chain, dag, task
from mlcontract.names import CHAMPION
from mlplatform import scoring
from mlplatform.defaults import dag_kwargs
from mlplatform.params import (
    EVENTS_TABLE_DESCRIPTION,
    SCORING_FORM,
    column_params,
    date_param,
    in_sections,
    optional_column_param,
    optional_entities_param,
    optional_table_param,
    param_args,
    relation_args,
    relation_params,
    score_date,
)
from mlplatform.settings import load_settings
from mlplatform.steps import FEATURES, TRAINER_CPU, step, step_dir
from mlplatform.xcom import pull, renders_as

SETTINGS = load_settings()
# Jinja test: the events and entities are scored unless a feature table is given (its step options are empty)
EVENTS_SCORING = "not params.features_table"


def pinned(key: str) -> str:
    """Jinja template of one value `resolve_champion` pinned for this run (pushed as its own XCom key)."""
    return pull("resolve_champion", key)


@dag(
    dag_id="batch_prediction",
    schedule="0 5 * * *",  # daily 05:00 UTC, after the warehouse's nightly load
    **dag_kwargs(SETTINGS, stage="scoring", start_date=datetime(2026, 1, 1, tzinfo=UTC), doc_md=__doc__),
    render_template_as_native_obj=False,
    params=in_sections({
        "score_date": date_param("Score as of this date (YYYY-MM-DD; uses events before it); empty: the run's date."),
        "features_table": optional_table_param(
            "For a champion trained on a ready-made feature table: the table whose rows to score (those of the "
            "score date when it has a snapshot column). Empty: the events and entities tables below."
        ),
        **relation_params("events", "events", EVENTS_TABLE_DESCRIPTION),
        "entities_table": optional_entities_param("Entities to score and their attributes (empty for none)."),
        **column_params(entity_key="customer_id", timestamp_column="event_ts"),
        "signup_column": optional_column_param(
            "signup_ts", "Entities table: score only entities signed up before the score date (empty for all)."
        ),
        "predictions_table": Param(
            "churn_predictions",
            type="string",
            pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$",
            description="Warehouse table of the predictions (created if missing; one date replaced per run).",
        ),
    }, SCORING_FORM),
)
def batch_prediction():
    @task(retries=0, multiple_outputs=True)
    @renders_as(scoring.SAMPLE_PIN)
    def resolve_champion(params=None, dag_run=None, data_interval_end=None) -> dict:
        """Pin this run to one concrete model version: `@champion`, its training snapshot and A/B share."""
        return scoring.resolve_champion(score_date(params, dag_run, data_interval_end), params["features_table"])

    champion = resolve_champion()

    extract_scoring = step(
        "extract_scoring",
        FEATURES,
        [
            "extract-scoring",
            "--as-of", pinned("score_date"),
            "--features-table", "{{ params.features_table or '' }}",
            *relation_args("events", EVENTS_SCORING),
            "--entities-table", f"{{{{ (params.entities_table or '') if {EVENTS_SCORING} else '' }}}}",
            "--signup-column", f"{{{{ (params.signup_column or '') if {EVENTS_SCORING} else '' }}}}",
            *param_args("entity_key", "timestamp_column"),
            # a feature table's rows of the score date, without its label: the champion's own columns
            "--snapshot-column", pinned("snapshot_column"),
            "--label-column", pinned("label_column"),
        ],
    )
    build_scoring = step(
        "build_scoring",
        FEATURES,
        ["build-scoring", "--extract", step_dir("extract_scoring"), "--reference-snapshot", pinned("snapshot_uri")],
    )
    score = step(
        "score",
        TRAINER_CPU,  # inference is light: the GPU pool is kept for training
        [
            "score",
            "--features", step_dir("build_scoring"),
            "--model-name", SETTINGS.registered_model_name,
            "--alias", CHAMPION,
            "--expect-version", pinned("version"),
            "--ab-challenger-share", pinned("ab_challenger_share"),
            "--challenger-version", pinned("challenger_version"),
        ],
    )
    # The gate does not retry: bad predictions stay bad, and a retry only delays the alert.
    validate_predictions = step(
        "validate_predictions",
        FEATURES,
        ["validate-predictions", "--predictions", step_dir("score"), "--spine", step_dir("extract_scoring")],
        retries=0,
    )
    publish_predictions = step(
        "publish_predictions",
        FEATURES,
        ["publish-predictions", "--predictions", step_dir("score"), "--table", "{{ params.predictions_table }}"],
    )

    chain(champion, extract_scoring, build_scoring, score, validate_predictions, publish_predictions)


batch_prediction()

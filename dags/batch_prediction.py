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

Every compute step is a pod built by `mlplatform.steps`; steps pass small manifests, never data.
`score_date` empty means the run's own date (events strictly before its midnight, UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, chain, dag, task
from mlplatform.defaults import dag_kwargs, date_param
from mlplatform.settings import load_settings
from mlplatform.steps import FEATURES, TRAINER_CPU, step, step_dir

SETTINGS = load_settings()


def resolved(key: str) -> str:
    """Jinja template of one value `resolve_champion` pinned for this run (pushed as its own XCom key)."""
    return f"{{{{ ti.xcom_pull(task_ids='resolve_champion', key='{key}') }}}}"


@dag(
    dag_id="batch_prediction",
    schedule="0 5 * * *",  # daily 05:00 UTC, after the warehouse's nightly load
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    doc_md=__doc__,
    tags=["ml", "scoring", "customer-churn"],
    **dag_kwargs(SETTINGS),
    render_template_as_native_obj=False,
    params={
        "score_date": date_param("Score as of this date (YYYY-MM-DD; uses events before it); empty: the run's date."),
        "events_table": Param("events", type="string", description="Warehouse table of timestamped events."),
        "events_query": Param(
            "", type="string", description="SQL query for events; overrides events_table when set."
        ),
        "entities_table": Param(
            "customers", type="string", description="Entities to score and their attributes ('' for none)."
        ),
        "entity_key": Param("customer_id", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "timestamp_column": Param("event_ts", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        "signup_column": Param(
            "signup_ts",
            type="string",
            pattern=r"^(|[A-Za-z_][A-Za-z0-9_]*)$",
            description="Entities table: score only entities signed up before the score date ('' for all).",
        ),
        "predictions_table": Param(
            "churn_predictions",
            type="string",
            pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$",
            description="Warehouse table of the predictions (created if missing; one date replaced per run).",
        ),
    },
)
def batch_prediction():
    @task(retries=0, multiple_outputs=True)
    def resolve_champion(params=None, dag_run=None, data_interval_end=None) -> dict:
        """Pin this run to one concrete model version: `@champion`, its training snapshot and A/B share."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
        from mlplatform import deployment, registry

        if params["score_date"]:
            score_date = params["score_date"]
        else:  # API-triggered runs have no logical date: fall back to when the run was due
            moment = data_interval_end or dag_run.run_after
            score_date = moment.astimezone(UTC).date().isoformat()

        name = SETTINGS.registered_model_name
        uri = SETTINGS.mlflow_tracking_uri
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            champion = client.get_model_version_by_alias(name, registry.CHAMPION)
        except MlflowException as error:
            raise RuntimeError(
                f"no @{registry.CHAMPION} version of {name!r} to score with: "
                f"run ml_model_training first ({error})"
            ) from None
        snapshot_uri = champion.tags.get("snapshot_uri")
        if not snapshot_uri:
            raise RuntimeError(
                f"{name} v{champion.version} has no 'snapshot_uri' tag: "
                "its training features are unknown"
            )

        try:
            record = deployment.read_deployment(SETTINGS.artifact_root, name, registry.CHAMPION)
        except FileNotFoundError:
            record = {}
        ab_test = record.get("mode") == "ab_test" and record.get("version") == str(champion.version)
        if record.get("mode") == "ab_test" and not ab_test:
            print(f"A/B record is for v{record.get('version')}, not champion v{champion.version}: no A/B arm")
        resolved = {
            "model_name": name,
            "version": str(champion.version),
            "run_id": champion.run_id,
            "snapshot_uri": snapshot_uri,
            "deploy_mode": "ab_test" if ab_test else "full",
            "ab_challenger_share": float(record.get("challenger_share") or 0.0) if ab_test else 0.0,
            # the A/B deployment's challenger, not whatever @challenger points at now (every run moves it)
            "challenger_version": str(record.get("challenger_version") or "") if ab_test else "",
            "score_date": score_date,
        }
        print(f"scoring {score_date} with {resolved}")
        return resolved

    champion = resolve_champion()

    extract_scoring = step(
        "extract_scoring",
        FEATURES,
        [
            "extract-scoring",
            "--as-of", resolved("score_date"),
            # A query, when given, replaces the table (the CLI accepts one or the other).
            "{{ '--events-query' if params.events_query else '--events-table' }}",
            "{{ params.events_query or params.events_table }}",
            "--entities-table", "{{ params.entities_table }}",
            "--entity-key", "{{ params.entity_key }}",
            "--timestamp-column", "{{ params.timestamp_column }}",
            "--signup-column", "{{ params.signup_column }}",
        ],
    )
    build_scoring = step(
        "build_scoring",
        FEATURES,
        [
            "build-scoring",
            "--extract", step_dir("extract_scoring"),
            "--reference-snapshot", resolved("snapshot_uri"),
        ],
    )
    score = step(
        "score",
        TRAINER_CPU,  # inference is light: the GPU pool is kept for training
        [
            "score",
            "--features", step_dir("build_scoring"),
            "--model-name", SETTINGS.registered_model_name,
            "--alias", "champion",
            "--expect-version", resolved("version"),
            "--ab-challenger-share", resolved("ab_challenger_share"),
            "--challenger-version", resolved("challenger_version"),
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
        [
            "publish-predictions",
            "--predictions", step_dir("score"),
            "--table", "{{ params.predictions_table }}",
        ],
    )

    chain(champion, extract_scoring, build_scoring, score, validate_predictions, publish_predictions)


batch_prediction()

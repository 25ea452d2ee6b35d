"""The Airflow-side task logic (mlplatform.training, .scoring, .monitoring, .params, .xcom) on typed
manifests built from their models: no DAG run, no registry."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowSkipException
from mlcontract.manifests import (
    EvaluateManifest,
    ModelEvaluation,
    MonitorManifest,
    SnapshotManifest,
    TrialManifest,
)
from mlcontract.rules import Score, decide_ab, decide_rollback
from mlplatform import monitoring, params, scoring, training, xcom
from mlplatform.deployment import Deployment

# --- training --------------------------------------------------------------------------------------------


def trial(index: int, valid_auc: float) -> TrialManifest:
    return TrialManifest(params={"max_depth": index}, seed=1, trial_index=index, valid_auc=valid_auc,
                         best_iteration=10, rounds=11, device="cpu", snapshot_hash="h", rows={"train": 9},
                         fit_seconds=0.1)


def test_best_trial_is_the_highest_valid_auc_and_ties_go_to_the_lower_index():
    best = training.best_trial([trial(0, 0.70), trial(1, 0.75), trial(2, 0.75)])
    assert best == {"trial": 1, "metric": "auc", "valid_metric": 0.75, "higher_is_better": True, "valid_auc": 0.75,
                    "params": {"max_depth": 1}}


def evaluation(challenger_auc: float, champion: ModelEvaluation | None) -> EvaluateManifest:
    return EvaluateManifest(
        model_name="m", snapshot_hash="h", test_rows=1000, threshold=0.5,
        challenger=ModelEvaluation(version="2", comparable=True, metrics={"auc": challenger_auc}), champion=champion,
    )


def test_promotion_compares_the_test_auc_of_both_models():
    champion = ModelEvaluation(version="1", comparable=True, metrics={"auc": 0.80})
    decision = training.promotion_decision(evaluation(0.81, champion), threshold=0.7, margin=0.005)
    assert decision.action == "promote" and decision.metric == "test_auc"
    assert (decision.candidate.version, decision.incumbent.version) == ("2", "1")
    assert training.route(decision.model_dump(mode="json"), "full") == "promote"
    assert training.route(decision.model_dump(mode="json"), "ab_test") == "start_ab_test"
    weaker = training.promotion_decision(evaluation(0.79, champion), threshold=0.7, margin=0.0)
    assert training.route(weaker.model_dump(mode="json"), "ab_test") == "reject"


def test_the_first_model_is_promoted_outright_even_in_ab_mode():
    decision = training.promotion_decision(evaluation(0.81, None), threshold=0.7, margin=0.0)
    assert "first model" in decision.reason
    assert training.route(decision.model_dump(mode="json"), "ab_test") == "promote"


# Issue 10 changed this: an incomparable champion refuses promotion unless the Param allows it.
def test_a_champion_without_comparable_metrics_refuses_promotion_unless_allowed():
    champion = ModelEvaluation(version="1", comparable=False, reason="its training snapshot is gone")
    decision = training.promotion_decision(evaluation(0.75, champion), threshold=0.7, margin=0.5)
    assert decision.action == "reject" and "its training snapshot is gone" in decision.reason
    assert training.route(decision.model_dump(mode="json"), "full") == "reject"
    allowed = training.promotion_decision(evaluation(0.75, champion), threshold=0.7, margin=0.5,
                                          allow_incomparable=True)
    assert allowed.action == "promote" and allowed.basis == "champion incomparable: allowed by Param"


def test_trial_arguments_point_every_trial_at_the_run_features():
    arguments = training.trial_arguments("s3://b/a", "dag", "run", n_trials=3, seed=7, max_rounds=50)
    assert len(arguments) == 3
    assert arguments[2] == ["trial", "--features", "s3://b/a/runs/dag/run/build_features", "--trial-index", "2",
                            "--n-trials", "3", "--seed", "7", "--max-rounds", "50"]


# --- scoring ---------------------------------------------------------------------------------------------


def model_version(version: str = "4", tags: dict | None = None):
    return SimpleNamespace(version=version, run_id="r1", tags={"snapshot_uri": "s3://snap"} if tags is None else tags)


def deployment(mode: str, version: str = "4") -> Deployment:
    return Deployment(model_name="m", alias="champion", version=version, model_uri=f"models:/m/{version}", mode=mode,
                      challenger_version="6" if mode == "ab_test" else None,
                      challenger_share=0.2 if mode == "ab_test" else 0.0, dag_id="d", run_id="r", deployed_at="t")


def snapshot(task: str = "binary", table_columns: dict | None = None, columns: dict | None = None) -> SnapshotManifest:
    """A training snapshot's manifest: events (no table columns in the spec) or a ready-made feature table."""
    return SnapshotManifest(
        snapshot_hash="h", feature_columns=["f"], rows={"train": 9}, label_rate={"train": 0.5},
        splits={"train": ["2026-01-01"]}, feature_config={"version": 1, "table_columns": table_columns or {}},
        categories={}, code_version="c", task=task,
        columns=columns or {"entity_id": "customer_id", "snapshot_ts": "snapshot_ts", "label": "churned"},
    )


EVENTS_SNAPSHOT = snapshot()
TABLE_SNAPSHOT = snapshot(
    "multiclass", {"plan": {"use": "one_hot", "top_k": 3}},
    {"entity_id": "account", "snapshot_ts": "as_of", "label": "tier"},
)


def pin(version: str = "4", record: Deployment | None = None, snapshot: SnapshotManifest = EVENTS_SNAPSHOT, **tags):
    return scoring.pin(model_version(version, **tags), record, model_name="m", score_date="2026-03-01",
                       snapshot=snapshot)


def test_pin_without_an_ab_test_serves_the_champion_only():
    pinned = pin(record=deployment("full"))
    assert (pinned.version, pinned.snapshot_uri, pinned.deploy_mode) == ("4", "s3://snap", "full")
    assert (pinned.ab_challenger_share, pinned.challenger_version) == (0.0, "")
    assert pin().deploy_mode == "full"


def test_pin_takes_the_challenger_arm_from_the_champions_ab_deployment():
    pinned = pin(record=deployment("ab_test"))
    assert (pinned.deploy_mode, pinned.ab_challenger_share, pinned.challenger_version) == ("ab_test", 0.2, "6")


def test_an_ab_record_for_another_version_is_ignored():
    pinned = pin("5", deployment("ab_test", version="4"))
    assert (pinned.deploy_mode, pinned.challenger_version) == ("full", "")


def test_a_champion_without_its_training_snapshot_cannot_score():
    with pytest.raises(scoring.ChampionUnavailable, match="snapshot_uri"):
        pin(tags={})


def test_the_task_and_source_are_the_champions_own():
    """What the champion learnt comes from its training snapshot; a feature table's columns with it."""
    events = pin()
    assert (events.task, events.source_kind, events.snapshot_column, events.label_column) == (
        "binary", "events", "", "")
    table = pin(snapshot=TABLE_SNAPSHOT)
    assert (table.task, table.source_kind, table.snapshot_column, table.label_column) == (
        "multiclass", "feature_table", "as_of", "tier")
    one_row_per_entity = snapshot(table_columns={"x": {"use": "numeric"}}, columns={"entity_id": "id", "label": "y"})
    assert scoring.trained_on(one_row_per_entity).snapshot_column == ""


def test_the_scoring_source_must_be_the_kind_the_champion_learnt_from():
    scoring.check_source(pin(), "m v4", None)
    scoring.check_source(pin(snapshot=TABLE_SNAPSHOT), "m v4", "accounts_features")
    with pytest.raises(scoring.ChampionUnavailable, match="m v4 was trained on a ready-made feature table: set "
                       "features_table"):
        scoring.check_source(pin(snapshot=TABLE_SNAPSHOT), "m v4", "")
    with pytest.raises(scoring.ChampionUnavailable, match="trained on events.*'accounts_features'"):
        scoring.check_source(pin(), "m v4", "accounts_features")


def test_the_render_samples_have_every_pinned_key():
    assert set(scoring.SAMPLE_PIN) == set(scoring.PinnedChampion.model_fields)
    assert set(scoring.SAMPLE_TRAINED_ON) == set(scoring.TrainedOn.model_fields)


# --- monitoring ------------------------------------------------------------------------------------------


def report(*, drift: bool = False, rollback: bool = False, ab: str | None = None) -> MonitorManifest:
    champion, previous = Score(version="5", value=0.6, rows=500), Score(version="4", value=0.7 if rollback else 0.6,
                                                                        rows=500)
    ab_decision = None
    if ab:
        ab_decision = decide_ab(Score(version="4", value=0.7, rows=500),
                                Score(version="6", value=0.8 if ab == "promote" else 0.6, rows=500),
                                margin=0.0, min_rows=100)
    return MonitorManifest(
        model_name="m", score_date="2026-03-01", rows={"predictions": 500}, reference={"version": "5"},
        thresholds={"psi": 0.2}, ignored_features=[], drift_evaluated=True, psi={"f": 0.5 if drift else 0.01},
        breached_features=["f"] if drift else [], missing_features=[], drift_detected=drift, labels_available=True,
        realised={}, rollback=decide_rollback(champion, previous, margin=0.01, min_rows=100), ab=ab_decision,
    )


def test_no_drift_skips_the_retrain_signal_with_the_threshold():
    with pytest.raises(AirflowSkipException, match="every PSI <= 0.2"):
        monitoring.emit_retrain_signal(report().model_dump(mode="json"), "d", "r")


def test_drift_signals_a_retrain_with_the_breached_features(monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    assert monitoring.emit_retrain_signal(report(drift=True).model_dump(mode="json"), "d", "r") == ["f"]


def test_no_rollback_recommended_skips_with_the_reason():
    with pytest.raises(AirflowSkipException, match="no rollback: .*within the margin"):
        monitoring.rollback_if_degraded(report().model_dump(mode="json"), "d", "r")


@pytest.mark.parametrize(
    "record, ab, rolled_back, blocker",
    [
        (None, "promote", False, "no A/B test running"),
        ("full", "promote", False, "no A/B test running"),
        ("ab_test", None, False, "no labelled arms yet"),
        ("ab_test", "promote", True, "just rolled back"),
        ("ab_test", "promote", False, None),
        ("ab_test", "keep", False, None),
    ],
)
def test_when_an_ab_test_is_decided(record, ab, rolled_back, blocker):
    found = monitoring.ab_test_blocker(deployment(record) if record else None, report(ab=ab), rolled_back)
    assert found == blocker or (blocker and blocker in found)


def test_the_summary_line_names_drift_rollback_and_ab():
    line = monitoring.summary_line(report(drift=True, rollback=True, ab="keep"))
    assert "drift True" in line and "rollback True" in line and "A/B keep" in line


# --- params and templates --------------------------------------------------------------------------------


def test_a_query_replaces_the_table():
    assert params.relation_args("labels") == [
        "{{ '--labels-query' if params.labels_query else '--labels-table' }}",
        "{{ params.labels_query or params.labels_table }}",
    ]
    assert params.param_args("entity_key") == ["--entity-key", "{{ params.entity_key }}"]


def render(arguments: list[str], **values) -> list[str]:
    import jinja2

    return [jinja2.Environment().from_string(argument).render(params=values) for argument in arguments]


TRAINING_PARAMS = {name: param.value for name, param in {
    **params.training_source_params(), **params.relation_params("events", "events", "d"),
    **params.relation_params("labels", "churn_labels", "d"), **params.learning_params(),
}.items()} | {"entities_table": "customers"}


def test_the_training_source_is_events_and_labels_or_a_feature_table():
    """Each argument is one template, so the unused source's options are passed empty (read as none)."""
    assert render(params.training_source_args(), **TRAINING_PARAMS) == [
        "--features-table", "", "--events-table", "events", "--labels-table", "churn_labels",
        "--entities-table", "customers",
    ]
    table = {**TRAINING_PARAMS, "source_kind": "feature_table", "features_table": "account_features"}
    assert render(params.training_source_args(), **table) == [
        "--features-table", "account_features", "--events-table", "", "--labels-table", "", "--entities-table", "",
    ]
    query = {**table, "features_table": None, "features_query": "select * from f", "events_query": "select 1"}
    assert render(params.training_source_args(), **query)[:4] == [
        "--features-query", "select * from f", "--events-query", ""]
    # a table and a query: both passed on (as --opt=value), for extract to refuse the pair (test_trigger_form)
    assert render(params.training_source_args(), **{**query, "features_table": "account_features"})[:2] == [
        "--features-table=account_features", "--features-query=select * from f"]
    # a feature table named nowhere: passed empty, never as the text "None"
    assert render(params.training_source_args(), **{**table, "features_table": None})[:2] == ["--features-table", ""]


def test_the_feature_spec_is_passed_as_json_or_empty_for_inferred():
    import json

    spec = {"version": 1, "windows_days": [7, 30], "events": {"amount": {"kind": "numeric"}}}
    assert json.loads(render([params.json_arg("feature_spec")], feature_spec=spec)[0]) == spec
    assert render([params.json_arg("feature_spec")], feature_spec=None) == [""]


def test_learning_params_offer_exactly_the_contracts_choices():
    from mlcontract.names import SPLIT_METHODS, TASKS

    learning = params.learning_params()
    assert learning["task"].schema["enum"] == list(TASKS) and learning["task"].value == "binary"
    assert learning["split"].schema["enum"] == list(SPLIT_METHODS) and learning["split"].value == "auto"
    # optional for the form: null (the default) means "inferred from the data"
    assert learning["feature_spec"].value is None and "null" in learning["feature_spec"].schema["type"]
    assert params.training_source_params()["source_kind"].schema["enum"] == ["events", "feature_table"]


def test_score_date_is_the_param_else_when_the_run_was_due():
    due = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    run = SimpleNamespace(run_after=due)
    assert params.score_date({"score_date": "2026-01-01"}, run, None) == "2026-01-01"
    assert params.score_date({"score_date": ""}, run, None) == "2026-03-02"
    assert params.score_date({"score_date": ""}, run, datetime(2026, 3, 1, tzinfo=UTC)) == "2026-03-01"


def test_column_params_accept_plain_identifiers_only():
    pattern = params.column_params(entity_key="customer_id")["entity_key"].schema["pattern"]
    import re

    assert re.match(pattern, "customer_id") and not re.match(pattern, "id; drop table")
    optional = params.optional_column_param("signup_ts", "d").schema["pattern"]
    assert re.match(optional, "") and not re.match(optional, "a b")


def test_xcom_templates_and_declared_samples():
    assert xcom.pull("t") == "{{ ti.xcom_pull(task_ids='t') }}"
    assert xcom.pull("t", "k", then=" | tojson") == "{{ ti.xcom_pull(task_ids='t', key='k') | tojson }}"

    @xcom.renders_as(lambda context: context["x"] * 2)
    def computed():
        pass

    assert xcom.sample_of(computed, {"x": 2}) == 4
    assert xcom.sample_of(lambda: None, {}) is None

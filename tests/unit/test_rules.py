"""The "two metrics and a margin" rules (mlcontract.rules): promotion, rollback and the A/B test."""

import math

import pytest
from mlcontract.rules import (
    ALREADY_CHAMPION,
    FIRST_MODEL,
    INCOMPARABLE_ALLOWED,
    INCOMPARABLE_REFUSED,
    INSUFFICIENT,
    KEEP,
    NOT_COMPUTABLE,
    PROMOTE,
    REJECT,
    ROLLBACK,
    TASK_METRICS,
    Score,
    decide_ab,
    decide_promotion,
    decide_rollback,
    task_metric,
)


def promotion(challenger: float, champion: float | None, **kwargs):
    return decide_promotion(Score(version="2", value=challenger),
                            None if champion is None else Score(version="1", value=champion), **kwargs)


# --- promotion -------------------------------------------------------------------------------------------

def test_first_model_is_promoted_when_it_clears_the_threshold():
    decision = promotion(0.81, None, threshold=0.7, margin=0.01)
    assert decision.action == PROMOTE and decision.acts
    assert "first model" in decision.reason


def test_first_model_below_threshold_is_rejected():
    decision = promotion(0.65, None, threshold=0.7, margin=0.01)
    assert decision.action == REJECT and not decision.acts
    assert "below the threshold" in decision.reason


def test_challenger_must_beat_champion_by_the_margin():
    assert promotion(0.805, 0.80, threshold=0.7, margin=0.01).action == REJECT
    assert promotion(0.81, 0.80, threshold=0.7, margin=0.01).action == PROMOTE


def test_better_than_champion_but_below_threshold_is_rejected():
    decision = promotion(0.69, 0.60, threshold=0.7, margin=0.0)
    assert decision.action == REJECT
    assert "threshold" in decision.reason


def test_worse_challenger_is_rejected_and_the_reason_names_both_scores():
    decision = promotion(0.78, 0.80, threshold=0.7, margin=0.0)
    assert decision.action == REJECT
    assert "0.7800" in decision.reason and "0.8000" in decision.reason


def test_nan_metric_never_promotes():
    assert promotion(math.nan, None, threshold=0.5, margin=0.0).action == REJECT


def test_negative_margin_is_an_error():
    with pytest.raises(ValueError, match="margin"):
        promotion(0.9, 0.8, threshold=0.5, margin=-0.1)


# Issue 10 changed this rule: a champion that cannot be compared is no longer treated as absent.
def test_a_champion_that_cannot_be_compared_refuses_promotion_unless_allowed():
    champion = Score(version="1", value=None, comparable=False, reason="its training snapshot is gone")
    decision = decide_promotion(Score(version="2", value=0.75), champion, threshold=0.7, margin=0.01)
    assert decision.action == REJECT and decision.basis == INCOMPARABLE_REFUSED
    assert "its training snapshot is gone" in decision.reason and "allow_incomparable_promotion" in decision.reason
    assert "first model" not in decision.reason
    assert decision.incumbent.version == "1" and decision.candidate.version == "2"
    allowed = decide_promotion(Score(version="2", value=0.75), champion, threshold=0.7, margin=0.01,
                               allow_incomparable=True)
    assert allowed.action == PROMOTE and allowed.basis == INCOMPARABLE_ALLOWED
    assert "allow_incomparable_promotion is set" in allowed.reason


def test_first_model_means_no_champion_exists():
    decision = decide_promotion(Score(version="1", value=0.75), None, threshold=0.7, margin=0.01)
    assert decision.action == PROMOTE and decision.basis == FIRST_MODEL and "first model" in decision.reason


def test_a_metric_that_cannot_be_computed_rejects_and_the_decision_stays_json():
    import json

    challenger = Score(version="2", value=float("nan"), comparable=False, reason="one class only")
    champion = Score(version="1", value=0.8)
    decision = decide_promotion(challenger, champion, threshold=0.7, margin=0.0)
    assert decision.action == REJECT and decision.basis == NOT_COMPUTABLE and "one class only" in decision.reason
    assert decision.candidate.value is None
    json.dumps(decision.model_dump(mode="json"), allow_nan=False)  # XCom: strict JSON


def test_a_challenger_that_is_already_champion_is_not_promoted_again():
    decision = decide_promotion(Score(version="3", value=0.8), Score(version="3", value=0.8), threshold=0.7,
                                margin=0.0)
    assert decision.action == REJECT and decision.basis == ALREADY_CHAMPION


# --- rollback --------------------------------------------------------------------------------------------

def auc(version: str, value: float | None, rows: int = 500, **kwargs) -> Score:
    return Score(version=version, value=value, rows=rows, **kwargs)


def test_rollback_when_the_previous_champion_is_better_by_more_than_the_margin():
    decision = decide_rollback(auc("5", 0.61), auc("4", 0.70), margin=0.01, min_rows=100)
    assert decision.action == ROLLBACK and decision.acts
    assert decision.incumbent.version == "5" and decision.candidate.version == "4"
    assert "v5" in decision.reason and "v4" in decision.reason


def test_no_rollback_within_the_margin():
    assert decide_rollback(auc("5", 0.695), auc("4", 0.70), margin=0.01, min_rows=100).action == KEEP


@pytest.mark.parametrize(
    "champion, previous, why",
    [
        (None, auc("4", 0.7), "labels"),
        (auc("5", None), auc("4", 0.7), "labels"),
        (auc("5", 0.5), None, "no previous champion"),
        (auc("5", 0.5), auc("4", None, comparable=False, reason="missing features"), "missing features"),
        (auc("5", 0.5, rows=20), auc("4", 0.9, rows=20), "20 labelled rows"),
    ],
)
def test_no_rollback_without_enough_evidence(champion, previous, why):
    decision = decide_rollback(champion, previous, margin=0.01, min_rows=100)
    assert decision.action == KEEP and why in decision.reason


# --- A/B test --------------------------------------------------------------------------------------------

def test_ab_promotes_a_challenger_arm_that_does_at_least_as_well_plus_the_margin():
    decision = decide_ab(auc("4", 0.70), auc("6", 0.72), margin=0.02, min_rows=100)
    assert decision.action == PROMOTE and decision.rule == "ab_test"


def test_ab_keeps_the_champion_when_the_challenger_arm_is_worse():
    assert decide_ab(auc("4", 0.70), auc("6", 0.71), margin=0.02, min_rows=100).action == KEEP


def test_ab_waits_for_enough_labelled_rows_in_both_arms():
    assert decide_ab(auc("4", 0.70), auc("6", 0.90, rows=50), margin=0.0, min_rows=100).action == INSUFFICIENT
    assert decide_ab(auc("4", math.nan), auc("6", 0.90), margin=0.0, min_rows=100).action == INSUFFICIENT


# --- lower-is-better metrics (multiclass log loss, regression RMSE) ----------------------------------------

LOG_LOSS = TASK_METRICS["multiclass"]


def lower(challenger: float, champion: float | None, *, baseline: float = 1.0, margin: float = 0.0):
    return decide_promotion(Score(version="2", value=challenger),
                            None if champion is None else Score(version="1", value=champion),
                            threshold=baseline, margin=margin, metric="test_log_loss", task=LOG_LOSS)


def test_the_task_table_names_each_tasks_metric_and_direction():
    assert {task: (m.name, m.higher_is_better) for task, m in TASK_METRICS.items()} == {
        "binary": ("auc", True), "multiclass": ("log_loss", False), "regression": ("rmse", False)}
    assert task_metric("regression").name == "rmse"
    with pytest.raises(ValueError, match="ranking"):
        task_metric("ranking")


def test_a_lower_is_better_first_model_must_beat_the_naive_baseline():
    decision = lower(0.62, None, baseline=0.69)
    assert decision.action == PROMOTE and "naive baseline 0.6900" in decision.reason
    assert decision.higher_is_better is False and decision.threshold == 0.69
    assert lower(0.69, None, baseline=0.69).action == REJECT  # equal is not beating it
    rejected = lower(0.75, None, baseline=0.69)
    assert rejected.action == REJECT and "does not beat the naive baseline" in rejected.reason


def test_a_lower_is_better_margin_is_relative_to_the_champion():
    # champion 0.50, margin 2 %: the challenger needs <= 0.49
    assert lower(0.49, 0.50, margin=0.02).action == PROMOTE
    rejected = lower(0.495, 0.50, margin=0.02)
    assert rejected.action == REJECT and "needs <= 0.4900" in rejected.reason
    assert lower(0.51, 0.50).action == REJECT  # worse, even with no margin
    assert "+2.00%" in lower(0.49, 0.50, margin=0.01).reason


def test_lower_is_better_rollback_and_ab_use_the_relative_margin():
    rmse = TASK_METRICS["regression"]
    worse_champion = decide_rollback(auc("5", 10.0), auc("4", 9.0), margin=0.05, min_rows=100, metric="rmse",
                                     task=rmse)
    assert worse_champion.action == ROLLBACK and worse_champion.higher_is_better is False
    assert "+10.00%" in worse_champion.reason
    assert decide_rollback(auc("5", 10.0), auc("4", 9.6), margin=0.05, min_rows=100, task=rmse).action == KEEP
    assert decide_rollback(auc("5", 9.0), auc("4", 10.0), margin=0.0, min_rows=100, task=rmse).action == KEEP
    assert decide_ab(auc("4", 10.0), auc("6", 9.8), margin=0.02, min_rows=100, task=rmse).action == PROMOTE
    assert decide_ab(auc("4", 10.0), auc("6", 9.9), margin=0.02, min_rows=100, task=rmse).action == KEEP

import math

import pytest

from mlplatform.promotion import decide_promotion


def test_first_model_is_promoted_when_it_clears_the_threshold():
    decision = decide_promotion(0.81, None, threshold=0.7, margin=0.01)
    assert decision.promote
    assert "first model" in decision.reason


def test_first_model_below_threshold_is_rejected():
    decision = decide_promotion(0.65, None, threshold=0.7, margin=0.01)
    assert not decision.promote
    assert "below the threshold" in decision.reason


def test_challenger_must_beat_champion_by_the_margin():
    assert not decide_promotion(0.805, 0.80, threshold=0.7, margin=0.01).promote
    assert decide_promotion(0.81, 0.80, threshold=0.7, margin=0.01).promote


def test_better_than_champion_but_below_threshold_is_rejected():
    decision = decide_promotion(0.69, 0.60, threshold=0.7, margin=0.0)
    assert not decision.promote
    assert "threshold" in decision.reason


def test_worse_challenger_is_rejected_and_the_reason_names_both_scores():
    decision = decide_promotion(0.78, 0.80, threshold=0.7, margin=0.0)
    assert not decision.promote
    assert "0.7800" in decision.reason and "0.8000" in decision.reason


def test_nan_metric_never_promotes():
    assert not decide_promotion(math.nan, None, threshold=0.5, margin=0.0).promote


def test_negative_margin_is_an_error():
    with pytest.raises(ValueError, match="margin"):
        decide_promotion(0.9, 0.8, threshold=0.5, margin=-0.1)

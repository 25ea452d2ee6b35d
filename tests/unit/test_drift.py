"""Drift math: quantile bins and PSI (trainer.drift), no I/O."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from trainer import drift


def test_psi_known_value():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert drift.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.274653, abs=1e-6)


def test_identical_distributions_have_psi_near_zero():
    rng = np.random.default_rng(0)
    reference = drift.distribution(rng.normal(size=50_000))
    assert drift.psi_against(reference, rng.normal(size=50_000)) < 0.01
    assert drift.psi(reference["proportions"], reference["proportions"]) == 0.0


def test_shifted_distribution_breaches_the_usual_threshold():
    rng = np.random.default_rng(1)
    reference = drift.distribution(rng.normal(size=20_000))
    assert drift.psi_against(reference, rng.normal(loc=0.8, size=20_000)) > 0.2
    assert drift.psi_against(reference, rng.normal(scale=2.0, size=20_000)) > 0.2


def test_empty_bins_give_a_finite_psi():
    expected = [0.5, 0.5, 0.0]
    actual = [0.0, 0.5, 0.5]
    value = drift.psi(expected, actual)
    assert math.isfinite(value) and value > 1.0
    with pytest.raises(ValueError, match="bins"):
        drift.psi([0.5, 0.5], [1.0])


def test_quantile_cuts_make_ten_bins_of_equal_mass():
    values = np.arange(1000, dtype=float)
    cuts = drift.quantile_cuts(values)
    assert len(cuts) == 9
    shares = drift.proportions(values, cuts)
    assert len(shares) == 11  # 10 value bins + the missing bin
    assert shares[:10] == pytest.approx([0.1] * 10, abs=0.002) and shares[10] == 0.0


def test_discrete_and_constant_features_get_one_bin_per_value():
    discrete = np.array([0, 0, 0, 1, 1, 2] * 100, dtype=float)
    cuts = drift.quantile_cuts(discrete)
    assert cuts == [0.0, 1.0, 2.0]
    assert drift.proportions(discrete, cuts) == pytest.approx([0.5, 1 / 3, 1 / 6, 0.0, 0.0])
    constant = np.full(500, 3.0)
    assert drift.quantile_cuts(constant) == [3.0]
    assert drift.proportions(constant, [3.0]) == [1.0, 0.0, 0.0]
    # a constant feature that starts to vary is drift, not an error
    assert drift.psi_against(drift.distribution(constant), np.linspace(0, 6, 500)) > 0.2


def test_missing_values_have_their_own_bin():
    values = np.array([1.0, 2.0, np.nan, np.nan])
    assert drift.proportions(values, [1.5]) == [0.25, 0.25, 0.5]
    assert drift.quantile_cuts([np.nan, np.nan]) == []
    assert drift.proportions([np.nan, 1.0], []) == [0.5, 0.5]


def test_reference_is_json_and_scores_use_fixed_bins():
    rng = np.random.default_rng(2)
    reference = drift.build_reference({"a": rng.normal(size=100), "b": rng.poisson(2, size=100)},
                                      rng.random(100))
    assert json.loads(json.dumps(reference)) == reference  # no inf/NaN: plain JSON
    assert reference["feature_columns"] == ["a", "b"]
    assert reference["score"]["cuts"] == pytest.approx([0.1 * i for i in range(1, 10)])
    assert sum(reference["features"]["a"]["proportions"]) == pytest.approx(1.0)


def test_predicted_class_shares_and_their_psi():
    reference = drift.category_distribution(["a", "b", "b", "c"], ["a", "b", "c"])
    assert reference["proportions"] == [0.25, 0.5, 0.25, 0.0] and reference["rows"] == 4
    assert drift.category_psi_against(reference, ["a", "b", "b", "c"] * 10) == 0.0
    # a class the model never predicted before lands in the last ("other") bin, and shows as drift
    assert drift.category_psi_against(reference, ["a", "a", "a", "z"]) > 0.2


def test_regression_reference_bins_the_predictions_by_their_quantiles():
    rng = np.random.default_rng(3)
    predictions = rng.normal(loc=50.0, scale=10.0, size=1000)
    reference = drift.build_reference({"a": rng.normal(size=1000)}, predictions, task="regression")
    assert reference["task"] == "regression" and "predicted_class" not in reference
    assert len(reference["score"]["cuts"]) == 9 and 30 < reference["score"]["cuts"][0] < 50
    assert drift.psi_against(reference["score"], rng.normal(loc=50.0, scale=10.0, size=1000)) < 0.05
    assert drift.psi_against(reference["score"], rng.normal(loc=60.0, scale=10.0, size=1000)) > 0.2
    multiclass = drift.build_reference({"a": [1.0, 2.0]}, [0.5, 0.9], task="multiclass",
                                       predicted_classes=["x", "y"], classes=["x", "y", "z"])
    assert multiclass["score"]["cuts"] == drift.SCORE_CUTS
    assert multiclass["predicted_class"]["proportions"] == [0.5, 0.5, 0.0, 0.0]

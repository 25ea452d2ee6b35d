"""The ``memory_budget`` Param of ml_model_training: checked as the trainer reads sizes, passed to every trial.

The form's pattern (the trigger form and the API refuse a bad value, naming the Param) and the trainer's own
parser (mlcontract.cli.parse_size) must agree: a value the form accepts is one the trainer reads.
"""

from __future__ import annotations

import re

import pytest
from mlcontract.cli import parse_size
from mlplatform import training
from mlplatform.params import OPTIONAL_SIZE_PATTERN, memory_budget

GOOD = ["6GiB", "512MiB", "2G", "1.5 GiB", "1048576", "64mib", " 4 GiB ", "3TiB", "100B", "8k"]
BAD = ["lots", "6 GB RAM", "-1GiB", "GiB", "6PiB", "1e9", "6,5GiB", "auto"]


@pytest.mark.parametrize("value", GOOD)
def test_the_form_accepts_what_the_trainer_reads(value):
    assert re.search(OPTIONAL_SIZE_PATTERN, value)
    assert parse_size(value) > 0
    assert memory_budget({"memory_budget": value}) == value.strip()


@pytest.mark.parametrize("value", BAD)
def test_the_form_refuses_what_the_trainer_would(value):
    assert not re.search(OPTIONAL_SIZE_PATTERN, value)
    with pytest.raises(ValueError, match=r"^Param memory_budget: .* is not a size"):
        memory_budget({"memory_budget": value})


@pytest.mark.parametrize("empty", [None, ""])
def test_empty_is_the_deployment_default_and_passes_nothing_to_the_trials(empty):
    assert memory_budget({"memory_budget": empty}) == memory_budget({}) == ""
    arguments = training.trial_arguments("s3://b/a", "dag", "run", n_trials=2, seed=7, max_rounds=50,
                                         memory_budget=memory_budget({"memory_budget": empty}))
    assert all("--memory-budget" not in trial for trial in arguments)


def test_a_given_budget_reaches_every_trial():
    arguments = training.trial_arguments("s3://b/a", "dag", "run", n_trials=3, seed=7, max_rounds=50,
                                         memory_budget="6GiB")
    assert [trial[-2:] for trial in arguments] == [["--memory-budget", "6GiB"]] * 3
    assert arguments[1][:4] == ["trial", "--features", "s3://b/a/runs/dag/run/build_features", "--trial-index"]


def test_the_plan_step_fails_on_a_bad_budget_naming_the_param(monkeypatch, tmp_path):
    monkeypatch.setenv("ARTIFACT_ROOT", str(tmp_path))
    params = {"n_trials": 2, "seed": 1, "max_boost_rounds": 10}
    assert training.plan_trials({**params, "memory_budget": "2GiB"}, "dag", "run")[0][-1] == "2GiB"
    with pytest.raises(ValueError, match="^Param memory_budget: 'lots' is not a size"):
        training.plan_trials({**params, "memory_budget": "lots"}, "dag", "run")

"""XGBoost: the hyperparameter space, the fit with early stopping, and scoring a booster.

No MLflow here: the Airflow DAG imports :func:`search_space` to fan out trials, so this module must stay
light (xgboost and numpy are imported lazily where they are needed).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlcontract.names import BINARY, MULTICLASS, REGRESSION

if TYPE_CHECKING:
    import numpy as np
    import xgboost as xgb

    from trainer.data import Snapshot

log = logging.getLogger(__name__)

# Tunable hyperparameters with the defaults a trial starts from. The first point of every search is
# exactly these, so even a one-trial search gets a sensible model.
DEFAULT_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "max_depth": 6,
    "min_child_weight": 1.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "reg_alpha": 0.0,
    "gamma": 0.0,
    "max_bin": 256,
    "n_estimators": 2000,  # an upper bound: early stopping on the validation split picks the length
    "early_stopping_rounds": 100,
}
# Keys a caller may pass that are results, not settings (e.g. a trial manifest's params fed back in).
IGNORED_KEYS = frozenset({"best_iteration"})
ALIASES = {"eta": "learning_rate", "lambda": "reg_lambda", "alpha": "reg_alpha"}
INT_KEYS = frozenset({"max_depth", "max_bin", "n_estimators", "early_stopping_rounds"})



@dataclass(frozen=True)
class Objective:
    """What the model is, per task (fixed, not tuned): xgboost's objective and the validation metric that
    drives early stopping (xgboost knows auc is maximised, mlogloss and rmse minimised)."""

    objective: str
    metric: str
    higher_is_better: bool


OBJECTIVES = {
    BINARY: Objective("binary:logistic", "auc", higher_is_better=True),
    MULTICLASS: Objective("multi:softprob", "mlogloss", higher_is_better=False),
    REGRESSION: Objective("reg:squarederror", "rmse", higher_is_better=False),
}


def objective(task: str) -> Objective:
    try:
        return OBJECTIVES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {sorted(OBJECTIVES)}") from None


def resolve_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The complete hyperparameter set: defaults overlaid with ``params``; unknown keys are an error."""
    resolved = dict(DEFAULT_PARAMS)
    for key, value in (params or {}).items():
        key = ALIASES.get(key, key)
        if key in IGNORED_KEYS:
            continue
        if key not in DEFAULT_PARAMS:
            raise ValueError(f"unknown hyperparameter {key!r}; known: {sorted(DEFAULT_PARAMS)}")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"hyperparameter {key!r} must be a number, got {value!r}")
        resolved[key] = int(value) if key in INT_KEYS else float(value)
    if resolved["n_estimators"] < 1 or resolved["early_stopping_rounds"] < 1:
        raise ValueError("n_estimators and early_stopping_rounds must be >= 1")
    return resolved


def search_space(n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` distinct hyperparameter sets, deterministic in ``seed`` (a seeded random search).

    The first set is :data:`DEFAULT_PARAMS`; the rest are drawn from ranges that suit tabular churn data
    of tens of thousands to millions of rows. Learning rates stay near 0.05 so early stopping, not the
    round budget, decides the model length; values are rounded so they read well in the UI.
    """
    import numpy as np

    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    rng = np.random.default_rng(seed)

    def log_uniform(low: float, high: float) -> float:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))

    trials: list[dict[str, Any]] = [dict(DEFAULT_PARAMS)]
    seen = {_key(trials[0])}
    while len(trials) < n_trials:
        candidate = dict(DEFAULT_PARAMS)
        candidate.update(
            learning_rate=round(log_uniform(0.03, 0.1), 4),
            max_depth=int(rng.integers(3, 9)),
            min_child_weight=round(log_uniform(1.0, 30.0), 3),
            subsample=round(float(rng.uniform(0.6, 1.0)), 3),
            colsample_bytree=round(float(rng.uniform(0.4, 1.0)), 3),
            reg_lambda=round(log_uniform(0.3, 20.0), 3),
            reg_alpha=round(log_uniform(1e-3, 2.0), 4),
            gamma=round(float(rng.choice([0.0, log_uniform(0.01, 1.0)])), 4),
        )
        if _key(candidate) not in seen:
            seen.add(_key(candidate))
            trials.append(candidate)
    return trials


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def booster_params(
    params: Mapping[str, Any], seed: int, device: str, task: str = BINARY, num_class: int | None = None
) -> dict[str, Any]:
    """The dict handed to ``xgboost.train``: tunables (minus the round settings) plus the fixed ones."""
    tunables = {k: v for k, v in params.items() if k not in ("n_estimators", "early_stopping_rounds")}
    fixed = objective(task)
    if task == MULTICLASS:
        if not num_class or num_class < 2:
            raise ValueError(f"a multiclass model needs num_class >= 2, got {num_class}")
        tunables["num_class"] = num_class
    return {
        **tunables,
        "objective": fixed.objective,
        "eval_metric": [fixed.metric],
        "tree_method": "hist",
        "device": device,
        # The only source of randomness (row/column subsampling). CPU hist builds the same trees
        # whatever the thread count, and CUDA histograms are deterministic by default in xgboost >= 2.
        "seed": seed,
    }


@dataclass(frozen=True)
class FitResult:
    booster: xgb.Booster  # sliced to the best iteration: it scores exactly as the early-stopped model
    params: dict[str, Any]  # the complete resolved hyperparameters
    best_iteration: int
    valid_metric: float  # the early-stopping metric (``metric``) at the best iteration
    metric: str
    rounds: int  # rounds actually run before stopping
    seconds: float
    device: str
    task: str = BINARY


def progress_callback(every: int, total: int, label: str, metric: str = "auc") -> xgb.callback.TrainingCallback:
    """An xgboost callback that logs every ``every`` rounds: "trial 3: round 200/2000 valid-auc=0.8312"."""
    import xgboost as xgb

    class ProgressLog(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            done = epoch + 1
            if done % every == 0 or done == total:
                value = evals_log.get("valid", {}).get(metric, [float("nan")])[-1]
                log.info("%s: round %d/%d valid-%s=%.4f", label, done, total, metric, value)
            return False  # never stops training itself

    return ProgressLog()


def fit(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    feature_names: list[str],
    params: Mapping[str, Any] | None,
    seed: int,
    device: str = "cpu",
    log_every: int = 100,
    label: str = "fit",
    task: str = BINARY,
    num_class: int | None = None,
) -> FitResult:
    """Boost on ``train`` with early stopping on ``valid`` (the task's metric: AUC, log loss or RMSE);
    deterministic for a given seed. ``num_class``: multiclass only, labels are class indices 0..K-1."""
    import xgboost as xgb

    resolved = resolve_params(params)
    metric = objective(task).metric
    (x_train, y_train), (x_valid, y_valid) = train, valid
    dtrain = xgb.QuantileDMatrix(
        x_train, label=y_train, feature_names=feature_names, max_bin=resolved["max_bin"]
    )
    dvalid = xgb.QuantileDMatrix(x_valid, label=y_valid, feature_names=feature_names, ref=dtrain)
    total = resolved["n_estimators"]
    started = time.perf_counter()
    booster = xgb.train(
        booster_params(resolved, seed, device, task, num_class),
        dtrain,
        num_boost_round=total,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=resolved["early_stopping_rounds"],
        callbacks=[progress_callback(log_every, total, label, metric)],
        verbose_eval=False,
    )
    seconds = time.perf_counter() - started
    best_iteration = int(booster.best_iteration)
    valid_metric = float(booster.best_score)
    rounds = booster.num_boosted_rounds()
    best = booster[: best_iteration + 1]
    best.set_param({"device": "cpu"})  # the saved model must load and score on CPU-only pods too
    log.info(
        "%s: stopped after %d rounds; best iteration %d valid-%s=%.4f (%.1fs on %s)",
        label,
        rounds,
        best_iteration,
        metric,
        valid_metric,
        seconds,
        device,
    )
    return FitResult(best, resolved, best_iteration, valid_metric, metric, rounds, seconds, device, task)


def fit_snapshot(snapshot: Snapshot, params: Mapping[str, Any] | None, seed: int, **options: Any) -> FitResult:
    """:func:`fit` on a snapshot's train split, early-stopped on its valid split (trials and the final fit),
    for the snapshot's task; ``options`` are :func:`fit`'s ``device``, ``log_every`` and ``label``."""
    columns = snapshot.feature_columns
    train, valid = snapshot["train"], snapshot["valid"]
    return fit(
        (train.features(columns), train.label), (valid.features(columns), valid.label), columns, params, seed,
        task=snapshot.task, num_class=snapshot.num_class, **options,
    )


def predict_proba(booster: xgb.Booster, x: np.ndarray, feature_names: list[str]) -> np.ndarray:
    """The booster's output: binary P(class 1) per row, multiclass an (n, K) probability matrix, regression
    the predicted value."""
    import xgboost as xgb

    return booster.predict(xgb.DMatrix(x, feature_names=feature_names))

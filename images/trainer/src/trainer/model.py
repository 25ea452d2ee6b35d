"""XGBoost: the hyperparameter space, the fit with early stopping, and scoring a booster.

No MLflow here: the Airflow DAG imports :func:`search_space` to fan out trials, so this module must stay
light (xgboost and numpy are imported lazily where they are needed).

Training data bigger than memory: when a snapshot's train and valid splits would take more than the memory
budget in memory (:func:`data_plan`), the fit reads them batch by batch from their parquet row groups into
xgboost's external memory (``ExtMemQuantileDMatrix``, its quantised pages cached on disk for CPU, in host
memory for CUDA) instead of into one matrix. Same trees either way up to the quantile sketch, which is
computed over batches instead of over the whole matrix.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlcontract.errors import StepInputError
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

# The in-memory fit holds, per feature value of train and valid: the split as read (8-byte columns), its
# float32 copy and the quantised matrix (1 byte up to 256 bins), with allocator slack: measured 21-25 B
# (peak anonymous memory of a trial over 250 k x 20 and 125 k x 150 values).
IN_MEMORY_BYTES_PER_VALUE = 24
# Without an explicit budget, the training data may take this share of the memory the process may use (its
# cgroup's limit in a pod, else the machine's): the rest is xgboost's own working memory and the booster.
DEFAULT_BUDGET_SHARE = 0.5
MEMORY_BUDGET_ENV = "TRAINER_MEMORY_BUDGET"  # the deployment's budget (mlplatform.settings passes it to pods)
# Rows per external-memory batch: large enough for xgboost's page sizes, small next to any budget (50
# float32 features: 50 MB).
EXTERNAL_BATCH_ROWS = 250_000


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
    external_memory: bool = False


@dataclass(frozen=True)
class DataPlan:
    """How a fit reads its data: in memory, or in external memory when the estimate exceeds the budget."""

    external: bool
    estimated_bytes: int  # of the in-memory fit's data (train and valid)
    budget_bytes: int
    rows: int  # train and valid

    def describe(self) -> str:
        how = "external memory" if self.external else "in memory"
        return (f"{how}: {self.rows:,} rows need about {self.estimated_bytes / 2**20:,.0f} MiB in memory, "
                f"budget {self.budget_bytes / 2**20:,.0f} MiB")


def memory_limit() -> int:
    """Bytes this process may use: its cgroup's memory limit (a pod's), else the machine's memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), physical)
    return physical


def default_memory_budget() -> int:
    """The deployment's budget (env ``TRAINER_MEMORY_BUDGET``, e.g. ``6GiB``; empty or ``auto``: none), else
    :data:`DEFAULT_BUDGET_SHARE` of :func:`memory_limit`. What an empty ``--memory-budget`` means too."""
    configured = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if configured and configured.lower() != "auto":
        from mlcontract.cli import parse_size

        try:
            return parse_size(configured)
        except ValueError as error:
            raise StepInputError(f"{MEMORY_BUDGET_ENV}: {error}") from None
    return int(memory_limit() * DEFAULT_BUDGET_SHARE)


def data_plan(snapshot: Snapshot, budget_bytes: int | None = None) -> DataPlan:
    """In memory or external memory for a fit on ``snapshot``'s train and valid splits, from their row
    counts (parquet footers, nothing read) and ``budget_bytes`` (default: :func:`default_memory_budget`)."""
    budget = default_memory_budget() if budget_bytes is None else budget_bytes
    rows = sum(snapshot.split_rows(name) for name in ("train", "valid"))
    estimated = rows * len(snapshot.feature_columns) * IN_MEMORY_BYTES_PER_VALUE
    return DataPlan(external=estimated > budget, estimated_bytes=estimated, budget_bytes=budget, rows=rows)


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
    (x_train, y_train), (x_valid, y_valid) = train, valid
    dtrain = xgb.QuantileDMatrix(
        x_train, label=y_train, feature_names=feature_names, max_bin=resolved["max_bin"]
    )
    dvalid = xgb.QuantileDMatrix(x_valid, label=y_valid, feature_names=feature_names, ref=dtrain)
    return boost(dtrain, dvalid, resolved, seed, device, log_every, label, task, num_class)


def fit_external(
    train: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    valid: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    feature_names: list[str],
    params: Mapping[str, Any] | None,
    seed: int,
    device: str = "cpu",
    log_every: int = 100,
    label: str = "fit",
    task: str = BINARY,
    num_class: int | None = None,
    cache_dir: str | None = None,
) -> FitResult:
    """:func:`fit` in xgboost's external memory: ``train`` and ``valid`` each start a fresh pass over
    (features, labels) batches; only one batch and xgboost's quantised pages are held at a time (the pages
    in files under ``cache_dir`` on CPU, in host memory on CUDA)."""
    import xgboost as xgb

    resolved = resolve_params(params)
    with tempfile.TemporaryDirectory(prefix="xgb-extmem-", dir=cache_dir) as cache:
        dtrain = xgb.ExtMemQuantileDMatrix(
            batch_iterator(train, feature_names, device, os.path.join(cache, "train")), max_bin=resolved["max_bin"]
        )
        dvalid = xgb.ExtMemQuantileDMatrix(
            batch_iterator(valid, feature_names, device, os.path.join(cache, "valid")), ref=dtrain
        )
        result = boost(dtrain, dvalid, resolved, seed, device, log_every, label, task, num_class)
        del dtrain, dvalid  # xgboost removes its cache files when the matrices go, before the folder does
    return result


def batch_iterator(
    batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], feature_names: list[str], device: str,
    cache_prefix: str,
) -> xgb.DataIter:
    """An ``xgboost.DataIter`` over the batches ``batches()`` yields (one pass per xgboost reset); the class
    is made here so that importing this module needs no xgboost."""
    import xgboost as xgb

    class Batches(xgb.DataIter):
        def __init__(self) -> None:
            self._pass: Iterator[tuple[np.ndarray, np.ndarray]] | None = None
            # CUDA: the pages stay in host memory (xgboost's default and fastest for the GPU); CPU: files.
            super().__init__(cache_prefix=cache_prefix, on_host=device == "cuda")

        def next(self, input_data: Callable) -> bool:
            if self._pass is None:
                self._pass = batches()
            batch = next(self._pass, None)
            if batch is None:
                return False
            x, y = batch
            if device == "cuda":
                x, y = on_device(x), on_device(y)
            input_data(data=x, label=y, feature_names=feature_names)
            return True

        def reset(self) -> None:
            self._pass = None

    return Batches()


def on_device(array: np.ndarray) -> Any:
    """A batch copied to the GPU when CuPy is there (xgboost builds CUDA pages from device arrays without
    another copy); the host array otherwise (xgboost copies it)."""
    try:
        import cupy
    except ImportError:
        return array
    return cupy.asarray(array)


def boost(
    dtrain: xgb.DMatrix,
    dvalid: xgb.DMatrix,
    resolved: dict[str, Any],
    seed: int,
    device: str,
    log_every: int,
    label: str,
    task: str,
    num_class: int | None,
) -> FitResult:
    """``xgboost.train`` with early stopping on ``dvalid`` (the task's metric), sliced to the best iteration."""
    import xgboost as xgb

    metric = objective(task).metric
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
    return FitResult(best, resolved, best_iteration, valid_metric, metric, rounds, seconds, device, task,
                     external_memory=isinstance(dtrain, xgb.ExtMemQuantileDMatrix))


def fit_snapshot(
    snapshot: Snapshot,
    params: Mapping[str, Any] | None,
    seed: int,
    memory_budget: int | None = None,
    plan: DataPlan | None = None,
    batch_rows: int = EXTERNAL_BATCH_ROWS,
    **options: Any,
) -> FitResult:
    """:func:`fit` on a snapshot's train split, early-stopped on its valid split (trials and the final fit),
    for the snapshot's task; ``options`` are :func:`fit`'s ``device``, ``log_every`` and ``label``.

    In memory when the splits fit ``memory_budget`` (bytes; default :func:`default_memory_budget`), else
    :func:`fit_external` over their parquet row groups, ``batch_rows`` at a time (see :func:`data_plan`;
    ``plan`` decides instead). Splits already loaded into ``snapshot`` are used as they are."""
    from trainer.data import load_snapshot, split_batches

    columns = snapshot.feature_columns
    loaded = "train" in snapshot.splits and "valid" in snapshot.splits
    plan = plan or (None if loaded and memory_budget is None else data_plan(snapshot, memory_budget))
    if plan is not None:
        log.info("%s: training data %s", options.get("label", "fit"), plan.describe())
    if plan is not None and plan.external:
        return fit_external(
            lambda: split_batches(snapshot, "train", batch_rows),
            lambda: split_batches(snapshot, "valid", batch_rows),
            columns, params, seed, task=snapshot.task, num_class=snapshot.num_class, **options,
        )
    if not loaded:
        snapshot = load_snapshot(snapshot.features_dir, splits=("train", "valid"))
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

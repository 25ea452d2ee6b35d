"""Metrics per task, the same for the final fit, the evaluation and the monitoring; the naive baseline; the
``score`` and ``predicted_class`` a prediction publishes.

A model's *output* is what its booster predicts: binary P(class 1) per row, multiclass an (n, K)
probability matrix, regression the predicted value. Labels are 0/1, class indices 0..K-1, or numbers.
"""

from __future__ import annotations

import numpy as np
from mlcontract.names import BINARY, MULTICLASS, REGRESSION
from sklearn import metrics as skm

THRESHOLD = 0.5  # threshold metrics use a fixed cut so challenger and champion are compared alike
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] so log loss stays finite


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """AUC, PR-AUC (average precision), log loss, Brier, and accuracy/precision/recall/F1 at ``threshold``."""
    y_true = np.asarray(y_true).astype(int)
    scores = np.clip(np.asarray(scores, dtype=float), EPSILON, 1 - EPSILON)
    predicted = (scores >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    return {
        "auc": float(skm.roc_auc_score(y_true, scores)) if both_classes else float("nan"),
        "pr_auc": float(skm.average_precision_score(y_true, scores)) if both_classes else float("nan"),
        "log_loss": float(skm.log_loss(y_true, scores, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y_true, scores)),
        "accuracy": float(skm.accuracy_score(y_true, predicted)),
        "precision": float(skm.precision_score(y_true, predicted, zero_division=0)),
        "recall": float(skm.recall_score(y_true, predicted, zero_division=0)),
        "f1": float(skm.f1_score(y_true, predicted, zero_division=0)),
        "threshold": float(threshold),
        "rows": len(y_true),
        "positive_rate": float(y_true.mean()) if len(y_true) else float("nan"),
    }


def multiclass_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """Log loss, accuracy and macro-F1 of an (n, K) probability matrix against class indices."""
    y_true = np.asarray(y_true).astype(int)
    probabilities = np.clip(np.asarray(probabilities, dtype=float), EPSILON, 1 - EPSILON)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    classes = list(range(probabilities.shape[1]))
    predicted = probabilities.argmax(axis=1)
    counts = np.bincount(y_true, minlength=len(classes)) if len(y_true) else np.zeros(len(classes))
    return {
        "log_loss": float(skm.log_loss(y_true, probabilities, labels=classes)) if len(y_true) else float("nan"),
        "accuracy": float(skm.accuracy_score(y_true, predicted)) if len(y_true) else float("nan"),
        # macro over the classes present in labels or predictions (absent classes would count as F1 = 0)
        "macro_f1": float(skm.f1_score(y_true, predicted, average="macro", zero_division=0))
        if len(y_true) else float("nan"),
        "rows": len(y_true),
        "majority_share": float(counts.max() / len(y_true)) if len(y_true) else float("nan"),
    }


def regression_metrics(y_true: np.ndarray, predictions: np.ndarray) -> dict:
    """RMSE, MAE and R² (R² needs two rows or more)."""
    y_true = np.asarray(y_true, dtype=float)
    predictions = np.asarray(predictions, dtype=float).reshape(-1)
    rows = len(y_true)
    return {
        "rmse": float(skm.root_mean_squared_error(y_true, predictions)) if rows else float("nan"),
        "mae": float(skm.mean_absolute_error(y_true, predictions)) if rows else float("nan"),
        "r2": float(skm.r2_score(y_true, predictions)) if rows > 1 else float("nan"),
        "rows": rows,
        "label_mean": float(y_true.mean()) if rows else float("nan"),
    }


def task_metrics(task: str, y_true: np.ndarray, output: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """The task's test metrics of a model's output (binary: :func:`classification_metrics` at ``threshold``)."""
    if task == BINARY:
        return classification_metrics(y_true, output, threshold)
    if task == MULTICLASS:
        return multiclass_metrics(y_true, output)
    if task == REGRESSION:
        return regression_metrics(y_true, output)
    raise ValueError(f"unknown task {task!r}")


def baseline_output(task: str, train_labels: np.ndarray, rows: int, num_class: int | None = None) -> np.ndarray:
    """The naive model's output for ``rows`` rows: the train split's class prior (binary, multiclass) or
    mean (regression), the same for every row."""
    train_labels = np.asarray(train_labels, dtype=float)
    if task == MULTICLASS:
        if not num_class:
            raise ValueError("a multiclass baseline needs num_class")
        prior = np.bincount(train_labels.astype(int), minlength=num_class) / max(len(train_labels), 1)
        return np.tile(prior, (rows, 1))
    return np.full(rows, float(train_labels.mean()))


def predictions(
    task: str, output: np.ndarray, classes: list[str] | None = None, threshold: float = THRESHOLD
) -> tuple[np.ndarray, list[str | None]]:
    """What a prediction publishes: ``score`` (binary P(class 1), multiclass P(predicted class),
    regression the predicted value) and ``predicted_class`` (binary "0"/"1" at ``threshold``, multiclass
    the user's label of the most probable class, regression None)."""
    output = np.asarray(output, dtype=float)
    if task == BINARY:
        score = output.reshape(-1)
        return score, np.where(score >= threshold, "1", "0").tolist()
    if task == MULTICLASS:
        if output.ndim != 2:
            raise ValueError(f"a multiclass model must output an (n, K) matrix, got shape {output.shape}")
        if classes is None or len(classes) != output.shape[1]:
            raise ValueError(f"the model outputs {output.shape[1]} classes but knows {classes}")
        best = output.argmax(axis=1)
        return output[np.arange(len(best)), best], [classes[i] for i in best]
    if task == REGRESSION:
        score = output.reshape(-1)
        return score, [None] * len(score)
    raise ValueError(f"unknown task {task!r}")

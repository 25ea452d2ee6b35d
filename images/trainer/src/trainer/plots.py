"""Diagnostic figures of a fitted model, rendered headless (Agg) to PNG bytes."""

from __future__ import annotations

import io as bytes_io

import matplotlib

matplotlib.use("Agg")  # pods have no display; set before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np
from sklearn import metrics as skm


def _png(fig) -> bytes:
    buffer = bytes_io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def roc_curve(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """``curves``: split name -> (labels, scores)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = skm.roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {skm.roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    return _png(fig)


def pr_curve(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in curves.items():
        precision, recall, _ = skm.precision_recall_curve(y, s)
        ax.plot(recall, precision, label=f"{name} (AP {skm.average_precision_score(y, s):.3f})")
        ax.axhline(float(np.mean(y)), linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(loc="upper right")
    return _png(fig)


def feature_importance(gain: dict[str, float], top: int = 25) -> bytes:
    """Horizontal bars of total gain for the ``top`` features."""
    items = sorted(gain.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.28 * len(items) + 1)))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set(xlabel="total gain", title="Feature importance")
    return _png(fig)


def confusion_matrix(y: np.ndarray, scores: np.ndarray, threshold: float, split: str) -> bytes:
    """Binary: actual 0/1 against the prediction at ``threshold``."""
    predicted = (np.asarray(scores) >= threshold).astype(int)
    return class_confusion(y, predicted, ["0", "1"], f"Confusion matrix ({split}, threshold {threshold:g})")


def class_confusion(y: np.ndarray, predicted: np.ndarray, classes: list[str], title: str) -> bytes:
    """Counts of actual (rows) against predicted (columns) class indices, labelled with ``classes``."""
    indices = list(range(len(classes)))
    matrix = skm.confusion_matrix(np.asarray(y).astype(int), np.asarray(predicted).astype(int), labels=indices)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            f"{count:,}",
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
        )
    ax.set(xticks=indices, yticks=indices, xlabel="predicted", ylabel="actual", title=title)
    ax.set_xticklabels(classes, rotation=45 if len(classes) > 4 else 0, ha="right" if len(classes) > 4 else "center")
    ax.set_yticklabels(classes)
    return _png(fig)


def predicted_vs_actual(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Regression: predicted against actual per split (``curves``: split -> (labels, predictions))."""
    fig, ax = plt.subplots(figsize=(5, 5))
    low, high = np.inf, -np.inf
    for name, (y, p) in curves.items():
        ax.scatter(y, p, s=4, alpha=0.3, label=f"{name} (R² {skm.r2_score(y, p):.3f})")
        low, high = min(low, np.min(y), np.min(p)), max(high, np.max(y), np.max(p))
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual")
    ax.legend(loc="upper left")
    return _png(fig)


def residuals(y: np.ndarray, predicted: np.ndarray, split: str) -> bytes:
    """Regression: residuals (actual - predicted) against the prediction, and their histogram."""
    residual = np.asarray(y, dtype=float) - np.asarray(predicted, dtype=float)
    fig, (scatter, histogram) = plt.subplots(1, 2, figsize=(9, 4))
    scatter.scatter(predicted, residual, s=4, alpha=0.3)
    scatter.axhline(0.0, linestyle="--", color="grey", linewidth=1)
    scatter.set(xlabel="predicted", ylabel="actual - predicted", title=f"Residuals ({split})")
    histogram.hist(residual, bins=50)
    histogram.set(xlabel="actual - predicted", ylabel="rows", title=f"Residual distribution ({split})")
    return _png(fig)

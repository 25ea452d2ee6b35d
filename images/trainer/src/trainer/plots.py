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
    matrix = skm.confusion_matrix(np.asarray(y).astype(int), (scores >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 4))
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
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xlabel="predicted",
        ylabel="actual",
        title=f"Confusion matrix ({split}, threshold {threshold:g})",
    )
    return _png(fig)

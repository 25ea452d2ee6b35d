"""Binary-classification metrics, the same for the final fit, the evaluation and the monitoring."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

THRESHOLD = 0.5  # threshold metrics use a fixed cut so challenger and champion are compared alike


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """AUC, PR-AUC (average precision), log loss, Brier, and accuracy/precision/recall/F1 at ``threshold``."""
    y_true = np.asarray(y_true).astype(int)
    scores = np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7)
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

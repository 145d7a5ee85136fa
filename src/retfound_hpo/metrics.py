"""DR grading metrics: accuracy (percent, the guide's objective), quadratic kappa, AUROC, F1."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

REFERABLE_GRADE = 2  # grade >= 2 (moderate NPDR or worse) is referable DR


def macro_ovr_auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the grades that have both positives and negatives."""
    scores = [
        roc_auc_score(y_true == c, probs[:, c])
        for c in range(probs.shape[1])
        if 0 < (y_true == c).sum() < len(y_true)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """All headline metrics from true grades (N,) and predicted probabilities (N, C)."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    labels = list(range(probs.shape[1]))
    referable_true, referable_pred = y_true >= REFERABLE_GRADE, y_pred >= REFERABLE_GRADE
    return {
        "accuracy": 100.0 * accuracy_score(y_true, y_pred),
        "kappa": float(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=labels)),
        "auroc": macro_ovr_auroc(y_true, probs),
        "f1": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
        "referable_sensitivity": _ratio(
            (referable_pred & referable_true).sum(), referable_true.sum()
        ),
        "referable_specificity": _ratio(
            (~referable_pred & ~referable_true).sum(), (~referable_true).sum()
        ),
    }


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else float("nan")

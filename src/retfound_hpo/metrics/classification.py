"""DR grading metrics: accuracy (percent, the guide's objective), kappa, AUROC, F1, RETFound score.

`classification_metrics` is the fast set the training loop computes every epoch; its referable-DR
figures are a cheap diagnostic from the argmax grade (`argmax_referable_*`), not the operating
point. Evaluation (`evaluation_metrics`, `bootstrap_intervals`) adds per-grade sensitivity,
referable-DR AUROC, the referable-DR operating point fixed on val (operating_point.py: sensitivity,
specificity, PPV and NPV of P(grade >= 2) >= threshold) and calibration (calibration.py: ECE). Both
compute every metric from image weights (how often each image is drawn), so one vectorised code
path gives the point estimate (all weights 1) and a whole batch of bootstrap resamples at once.

- `kappa`: quadratic-weighted Cohen's kappa (the APTOS-2019 competition metric).
- `kappa_unweighted`: plain Cohen's kappa, the one RETFound's selection score uses.
- `auroc`: macro one-vs-rest AUROC over the grades present in the data.
- `f1`: macro F1 over all num_classes grades (a grade neither present nor predicted scores 0, as
  sklearn's f1_score with labels=range(num_classes)).
- `retfound`: (f1 + auroc + kappa_unweighted) / 3, RETFound's checkpoint-selection score.

Bootstrap resamples draw patients, not images, when the data names patients with several images
(EyePACS eyes, a CSV with a patient column): a drawn patient brings all their images. A resample
where a metric is undefined is counted (`<metric>_ci_undefined`) and left out of that metric's
interval: e.g. macro AUROC and macro F1 are undefined in a resample that lacks a grade present in
the full data (rather than averaged over fewer grades), a sensitivity in one without positives.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

from retfound_hpo.metrics.calibration import weighted_ece
from retfound_hpo.metrics.operating_point import (
    REFERABLE_GRADE,
    referable_score,
    weighted_operating_point,
)


def macro_ovr_auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the grades that have both positives and negatives."""
    scores = [
        roc_auc_score(y_true == c, probs[:, c])
        for c in range(probs.shape[1])
        if 0 < (y_true == c).sum() < len(y_true)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The per-epoch metrics from true grades (N,) and predicted probabilities (N, C)."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(axis=1)
    labels = list(range(probs.shape[1]))
    metrics = {
        "accuracy": 100.0 * accuracy_score(y_true, y_pred),
        "kappa": float(cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=labels)),
        "kappa_unweighted": float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        "auroc": macro_ovr_auroc(y_true, probs),
        "f1": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
    }
    metrics["retfound"] = (metrics["f1"] + metrics["auroc"] + metrics["kappa_unweighted"]) / 3
    referable_true, referable_pred = y_true >= REFERABLE_GRADE, y_pred >= REFERABLE_GRADE
    metrics["argmax_referable_sensitivity"] = _ratio(
        (referable_pred & referable_true).sum(), referable_true.sum()
    )
    metrics["argmax_referable_specificity"] = _ratio(
        (~referable_pred & ~referable_true).sum(), (~referable_true).sum()
    )
    return metrics


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else float("nan")


def evaluation_metrics(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """Every evaluation metric (see the module docstring); with `threshold`, the referable-DR
    operating point's sensitivity, specificity, PPV and NPV too. Undefined values are NaN."""
    y_true = np.asarray(y_true)
    weights = np.ones((1, len(y_true)))
    return {k: float(v[0]) for k, v in weighted_metrics(y_true, probs, weights, threshold).items()}


def weighted_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """Evaluation metrics for B weightings of the same N images: weights (B, N) -> {name: (B,)}.

    A weighting counts image i weights[b, i] times, which is what a bootstrap resample does."""
    y_true = np.asarray(y_true)
    n_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    # cm[b, t, p]: weight of images with true grade t predicted as p
    cells = np.zeros((len(y_true), n_classes * n_classes))
    cells[np.arange(len(y_true)), y_true * n_classes + y_pred] = 1.0
    cm = (weights @ cells).reshape(-1, n_classes, n_classes)
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)  # (B, C)
    actual, predicted = cm.sum(axis=2), cm.sum(axis=1)  # (B, C) marginals
    grades = np.arange(n_classes)
    present = np.unique(y_true)  # grades of the full data: a macro average needs all of them
    complete = (actual[:, present] > 0).all(axis=1)  # (B,)
    f1_denominator = actual + predicted  # 2 TP + FP + FN; 0 only for a grade never seen
    f1 = np.divide(2 * tp, f1_denominator, out=np.zeros_like(tp), where=f1_denominator > 0)
    grade_auroc = np.stack([_weighted_auroc(y_true == c, probs[:, c], weights) for c in present])
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics = {
            "accuracy": 100.0 * tp.sum(axis=1) / total,
            "kappa": _kappa(cm, actual, predicted, (grades[:, None] - grades[None, :]) ** 2.0),
            "kappa_unweighted": _kappa(cm, actual, predicted, 1.0 - np.eye(n_classes)),
            "auroc": np.where(complete, grade_auroc.mean(axis=0), np.nan),
            "f1": np.where(complete, f1.mean(axis=1), np.nan),
        }
        metrics["retfound"] = (metrics["f1"] + metrics["auroc"] + metrics["kappa_unweighted"]) / 3
        metrics["ece"] = weighted_ece(y_true, probs, weights)
        if n_classes > REFERABLE_GRADE:
            referable = y_true >= REFERABLE_GRADE
            metrics["referable_auroc"] = _weighted_auroc(referable, referable_score(probs), weights)
            if threshold is not None:
                metrics |= weighted_operating_point(y_true, probs, threshold, weights)
        for c in grades:
            metrics[f"sensitivity_grade_{c}"] = tp[:, c] / actual[:, c]
    return metrics


def _kappa(
    cm: np.ndarray, actual: np.ndarray, predicted: np.ndarray, penalty: np.ndarray
) -> np.ndarray:
    """Cohen's kappa per weighting with disagreement `penalty` (C, C); its scale cancels."""
    total = cm.sum(axis=(1, 2))
    observed = (cm * penalty).sum(axis=(1, 2)) / total
    expected = np.einsum("bi,ij,bj->b", actual, penalty, predicted) / total**2
    return 1.0 - observed / expected


def _weighted_auroc(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC (ties count one half, as sklearn's) per weighting: (B, N) -> (B,).

    NaN where a weighting has no positive or no negative image."""
    order = np.argsort(score, kind="stable")
    s, pos = score[order], positive[order]
    w = weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    w_pos = np.add.reduceat(w * pos, starts, axis=1)
    w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    wins = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    return np.divide(wins, pairs, out=np.full(len(w), np.nan), where=pairs > 0)

"""DR grading metrics: accuracy (percent, the guide's objective), quadratic kappa, AUROC, F1.

`classification_metrics` is the fast set the training loop computes every epoch. Evaluation adds
per-grade sensitivity and referable-DR AUROC (`evaluation_metrics`) and bootstrap percentile
intervals (`bootstrap_intervals`). Both compute every metric from image weights (how often each
image is drawn), so one vectorised code path gives the point estimate (all weights 1) and a whole
batch of bootstrap resamples at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

REFERABLE_GRADE = 2  # grade >= 2 (moderate NPDR or worse) is referable DR
RESAMPLE_CHUNK = 128  # resamples per vectorised batch: bounds memory at 128 x N weights


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


def evaluation_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """classification_metrics plus per-grade sensitivity and referable-DR AUROC.

    Referable AUROC scores each image by P(grade >= 2), the sum of its grade 2-4 probabilities.
    Undefined values (e.g. sensitivity of a grade with no images) are NaN."""
    y_true = np.asarray(y_true)
    weights = np.ones((1, len(y_true)))
    return {k: float(v[0]) for k, v in weighted_metrics(y_true, probs, weights).items()}


def bootstrap_indices(n_images: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled image indices in (chunk, n_images) batches, drawn with replacement from one
    seeded generator: row b of the concatenated batches is resample b."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, RESAMPLE_CHUNK):
        rows = min(RESAMPLE_CHUNK, n_resamples - start)
        yield rng.integers(0, n_images, size=(rows, n_images))


def bootstrap_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int]:
    """Percentile bootstrap intervals of every evaluation metric, resampling images.

    Returns flat keys `<metric>_ci_low`, `<metric>_ci_high` and `<metric>_ci_n`, the number of
    resamples used: a resample where the metric is undefined (e.g. no grade-4 image drawn) is
    skipped for that metric only. Bounds are NaN when no resample defines the metric."""
    y_true = np.asarray(y_true)
    n = len(y_true)
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    for idx in bootstrap_indices(n, n_resamples, seed):
        # weights[b, i]: how many times resample b drew image i
        flat = (idx + n * np.arange(len(idx))[:, None]).ravel()
        weights = np.bincount(flat, minlength=idx.size).reshape(idx.shape).astype(float)
        for name, v in weighted_metrics(y_true, probs, weights).items():
            values[name].append(v)
    tail = 50.0 * (1.0 - level)
    out: dict[str, float | int] = {}
    for name, chunks in values.items():
        v = np.concatenate(chunks)
        v = v[np.isfinite(v)]
        low, high = np.percentile(v, [tail, 100.0 - tail]) if v.size else (np.nan, np.nan)
        out |= {f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}
        out[f"{name}_ci_n"] = int(v.size)
    return out


def weighted_metrics(
    y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Evaluation metrics for B weightings of the same N images: weights (B, N) -> {name: (B,)}.

    A weighting counts image i weights[b, i] times, which is what a bootstrap resample does."""
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
    penalty = (grades[:, None] - grades[None, :]) ** 2.0  # quadratic; its scale cancels
    observed = (cm * penalty).sum(axis=(1, 2)) / total
    expected = np.einsum("bi,ij,bj->b", actual, penalty, predicted) / total**2
    f1_denominator = actual + predicted  # 2 TP + FP + FN; 0 only for a grade never seen
    f1 = np.divide(2 * tp, f1_denominator, out=np.zeros_like(tp), where=f1_denominator > 0)
    r = REFERABLE_GRADE
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics = {
            "accuracy": 100.0 * tp.sum(axis=1) / total,
            "kappa": 1.0 - observed / expected,
            "auroc": _nanmean(
                np.stack([_weighted_auroc(y_true == c, probs[:, c], weights) for c in grades])
            ),
            "f1": f1.mean(axis=1),
            "referable_sensitivity": cm[:, r:, r:].sum(axis=(1, 2)) / cm[:, r:].sum(axis=(1, 2)),
            "referable_specificity": cm[:, :r, :r].sum(axis=(1, 2)) / cm[:, :r].sum(axis=(1, 2)),
            "referable_auroc": _weighted_auroc(y_true >= r, probs[:, r:].sum(axis=1), weights),
        }
        for c in grades:
            metrics[f"sensitivity_grade_{c}"] = tp[:, c] / actual[:, c]
    return metrics


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


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN (without a warning) where all are NaN."""
    defined = np.isfinite(values)
    count = defined.sum(axis=0)
    total = np.where(defined, values, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.full(values.shape[1], np.nan), where=count > 0)

"""The referable-DR operating point: a threshold on P(grade >= 2), fixed on the validation split.

An image is called referable when its score, P(grade >= 2) (the sum of its grade 2-4
probabilities), is at least the threshold. The threshold is chosen once, on val predictions only,
and then applied unchanged to the test split and every other dataset, so that the test figures
measure a decision made before the test set was seen.

The rules that choose it are in threshold.py (which the search and training never import).
"""

from __future__ import annotations

import numpy as np

REFERABLE_GRADE = 2  # grade >= 2 (moderate NPDR or worse) is referable DR


def referable_score(probs: np.ndarray) -> np.ndarray:
    """P(grade >= 2) per image: (N, C) probabilities -> (N,)."""
    return probs[:, REFERABLE_GRADE:].sum(axis=1)


def weighted_operating_point(
    y_true: np.ndarray, probs: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV and NPV at `threshold` for B weightings (B, N) -> {name: (B,)}.

    NaN where a figure is undefined (no referable image drawn, nobody referred, ...)."""
    positive = np.asarray(y_true) >= REFERABLE_GRADE
    referred = referable_score(probs) >= threshold
    tp, fn = weights @ (positive & referred), weights @ (positive & ~referred)
    tn, fp = weights @ (~positive & ~referred), weights @ (~positive & referred)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "referable_sensitivity": tp / (tp + fn),
            "referable_specificity": tn / (tn + fp),
            "referable_ppv": tp / (tp + fp),
            "referable_npv": tn / (tn + fn),
        }

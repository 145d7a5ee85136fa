"""The referable-DR operating point: a threshold on P(grade >= 2), fixed on the validation split.

An image is called referable when its score, P(grade >= 2) (the sum of its grade 2-4
probabilities), is at least the threshold. The threshold is chosen once, on val predictions only,
and then applied unchanged to the test split and every other dataset, so that the test figures
measure a decision made before the test set was seen.

Rules (`evaluate.referable_rule`):
- `sensitivity`: the highest threshold whose val sensitivity is at least `evaluate.referable_target`
  (the fewest referrals that still catch that share of referable eyes);
- `youden`: the threshold maximising val sensitivity + specificity - 1 (ties: the highest).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

from retfound_hpo.core.errors import DatasetError

REFERABLE_GRADE = 2  # grade >= 2 (moderate NPDR or worse) is referable DR
RULES = ("sensitivity", "youden")
Rule = Literal["sensitivity", "youden"]


def referable_score(probs: np.ndarray) -> np.ndarray:
    """P(grade >= 2) per image: (N, C) probabilities -> (N,)."""
    return probs[:, REFERABLE_GRADE:].sum(axis=1)


def choose_threshold(y_true: np.ndarray, probs: np.ndarray, rule: Rule, target: float) -> float:
    """The operating point's threshold from validation grades (N,) and probabilities (N, C).

    The threshold is always one of the val scores, so `score >= threshold` reproduces the val
    figures exactly."""
    positive = np.asarray(y_true) >= REFERABLE_GRADE
    if positive.all() or not positive.any():
        which = "non-referable (grade < 2)" if positive.all() else "referable (grade >= 2)"
        raise DatasetError(
            f"the val split has no {which} image: the referable-DR operating point cannot be "
            "chosen; use a larger val_fraction or data with both"
        )
    # thresholds fall, sensitivity (tpr) rises; thresholds[0] is +inf (nothing referred)
    fpr, tpr, thresholds = roc_curve(positive, referable_score(probs), drop_intermediate=False)
    if rule == "sensitivity":
        i = int(np.argmax(tpr >= target))  # first, i.e. highest, threshold reaching the target
    elif rule == "youden":
        i = 1 + int(np.argmax((tpr - fpr)[1:]))  # argmax takes the first (highest) of ties
    else:
        raise ValueError(f"unknown operating-point rule {rule!r}; choose one of {RULES}")
    return float(thresholds[i])


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

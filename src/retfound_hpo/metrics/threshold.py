"""Choosing the referable-DR threshold on val, so that the sensitivity target holds beyond val.

An image is referred when P(grade >= 2) >= threshold. Rules (`evaluate.referable_rule`):
- `sensitivity_lcb` (default): the highest threshold whose one-sided lower confidence bound (at
  `level`, default 95 %) of val sensitivity reaches the target. Sensitivity falls as the
  threshold rises, so the rule fails (true sensitivity below target) only when the bound
  reaches the target at a threshold whose true sensitivity is just below it: one one-sided test,
  no multiplicity. In simulation (BENCHMARKS.md) the true sensitivity reaches the target in
  ~96 % of draws, against ~47 % for the point rule. With too few referable val images no
  threshold's bound reaches the target: then every val image is referred (the lowest val score)
  and `reached` is False, which the evaluation reports as a warning.
- `sensitivity`: the highest threshold whose val sensitivity (the point estimate) reaches the
  target; its true sensitivity falls short about half the time.
- `youden`: the threshold maximising val sensitivity + specificity - 1 (ties: the highest).
The threshold is always a val score, so `score >= threshold` reproduces the val figures exactly.
Bounds are clustered by the resampling unit when one holds several referable images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.metrics.operating_point import REFERABLE_GRADE, referable_score
from retfound_hpo.metrics.proportions import (
    ProportionMethod,
    clustered_lower_bound,
    clustered_proportion_interval,
    unit_codes,
)

RULES = ("sensitivity_lcb", "sensitivity", "youden")
Rule = Literal["sensitivity_lcb", "sensitivity", "youden"]


@dataclass(frozen=True)
class ThresholdChoice:
    """The operating point chosen on val, and what val says about its sensitivity."""

    rule: str
    threshold: float
    target: float | None  # None for youden
    reached: bool  # the rule's requirement was met on val (always True for youden)
    level: float  # one-sided confidence of `sensitivity_bound` (and of the lcb rule)
    method: str  # wilson or clopper-pearson
    sensitivity: float  # val sensitivity at the threshold: the expected sensitivity
    sensitivity_low: float  # its two-sided interval at `interval_level`
    sensitivity_high: float
    sensitivity_bound: float  # its one-sided lower bound at `level`
    interval_level: float
    n_referable: int  # referable val images


def _positives(y_true: np.ndarray) -> np.ndarray:
    positive = np.asarray(y_true) >= REFERABLE_GRADE
    if positive.all() or not positive.any():
        which = "non-referable (grade < 2)" if positive.all() else "referable (grade >= 2)"
        raise DatasetError(
            f"the val split has no {which} image: the referable-DR operating point cannot be "
            "chosen; use a larger val_fraction or data with both"
        )
    return positive


def _lcb_threshold(score, positive, target, level, method, units) -> tuple[float, bool]:
    """The highest positive val score whose lower bound reaches `target`; else the lowest val
    score (refer everyone) and False."""
    pos_scores = score[positive]
    thresholds = np.unique(pos_scores)[::-1]  # descending: detected counts rise along it
    hits = pos_scores[None, :] >= thresholds[:, None]  # (T, positives)
    pos_units = None
    if units is not None and unit_codes(np.asarray(units)[positive])[1].max() > 1:
        pos_units = np.asarray(units)[positive]
    bounds = clustered_lower_bound(hits, pos_units, level, method)
    ok = bounds >= target
    if not ok.any():
        return float(score.min()), False
    return float(thresholds[int(np.argmax(ok))]), True


def choose_threshold(
    y_true: np.ndarray,
    probs: np.ndarray,
    rule: Rule,
    target: float,
    level: float = 0.95,
    method: ProportionMethod = "wilson",
    units: np.ndarray | None = None,
    interval_level: float = 0.95,
) -> ThresholdChoice:
    """The operating point from val grades (N,), probabilities (N, C) and units (N,)."""
    positive = _positives(y_true)
    score = referable_score(probs)
    reached = True
    if rule == "sensitivity_lcb":
        threshold, reached = _lcb_threshold(score, positive, target, level, method, units)
    elif rule in ("sensitivity", "youden"):
        # thresholds fall, sensitivity (tpr) rises; thresholds[0] is +inf (nothing referred)
        fpr, tpr, thresholds = roc_curve(positive, score, drop_intermediate=False)
        if rule == "sensitivity":
            i = int(np.argmax(tpr >= target))  # the first, i.e. highest, reaching the target
        else:
            i = 1 + int(np.argmax((tpr - fpr)[1:]))  # argmax takes the first (highest) of ties
        threshold = float(thresholds[i])
    else:
        raise ValueError(f"unknown operating-point rule {rule!r}; choose one of {RULES}")
    hits = (score[positive] >= threshold).astype(float)
    pos_units = np.arange(hits.size) if units is None else np.asarray(units)[positive]
    two = clustered_proportion_interval(hits, pos_units, interval_level, method)
    return ThresholdChoice(
        rule=rule,
        threshold=threshold,
        target=None if rule == "youden" else float(target),
        reached=reached,
        level=level,
        method=method,
        sensitivity=float(hits.mean()),
        sensitivity_low=float(two.low),
        sensitivity_high=float(two.high),
        sensitivity_bound=float(clustered_lower_bound(hits, pos_units, level, method)),
        interval_level=interval_level,
        n_referable=int(positive.sum()),
    )

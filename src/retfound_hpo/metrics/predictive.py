"""PPV and NPV at a stated prevalence (a screening population's, not the test set's).

By Bayes' rule PPV depends on the data only through LR+ = se / (1 - sp):
logit PPV = logit pi + log LR+; likewise 1 / NPV - 1 = pi / (1 - pi) x LR-, LR- = (1 - se) / sp.
Each likelihood ratio is a ratio of two independent binomial proportions (referable vs
non-referable images), and its interval maps monotonically onto one for PPV or NPV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from statsmodels.stats.proportion import confint_proportions_2indep

from retfound_hpo.metrics.proportions import ProportionMethod, check_level, proportion_interval

PredictiveMethod = Literal["score", "log", "bounds"]


@dataclass(frozen=True)
class PredictiveValues:
    prevalence: float
    ppv: float
    ppv_low: float
    ppv_high: float
    npv: float
    npv_low: float
    npv_high: float
    method: str


def ppv_npv(
    sensitivity: float | np.ndarray, specificity: float | np.ndarray, prevalence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bayes' rule: PPV = se pi / (se pi + (1 - sp)(1 - pi)), NPV = sp (1 - pi) /
    (sp (1 - pi) + (1 - se) pi). Both rise with sensitivity and with specificity."""
    se, sp, pi = np.asarray(sensitivity, float), np.asarray(specificity, float), prevalence
    with np.errstate(invalid="ignore", divide="ignore"):
        ppv = se * pi / (se * pi + (1 - sp) * (1 - pi))
        npv = sp * (1 - pi) / (sp * (1 - pi) + (1 - se) * pi)
    return ppv, npv


def ratio_interval(
    c1: int, n1: int, c2: int, n2: int, alpha: float, method: str
) -> tuple[float, float]:
    """Interval for (c1 / n1) / (c2 / n2), two independent binomials (statsmodels), in [0, inf]."""
    if method == "log" and (c1 == 0 or c2 == 0):
        return float("nan"), float("nan")  # Mercaldo's logit interval is undefined there
    inverse = False
    if method == "score" and c2 == n2:
        if c1 == n1:
            # both proportions 1 (e.g. everyone referred: LR+ = 1 / 1): the score interval
            # degenerates to a point; the ratio of the two Wilson intervals' ends instead
            # (conservative, never zero width)
            lo1, hi1 = proportion_interval(c1, n1, 1.0 - alpha)
            lo2, hi2 = proportion_interval(c2, n2, 1.0 - alpha)
            return float(lo1 / hi2), (float(hi1 / lo2) if lo2 > 0 else np.inf)
        else:
            # statsmodels 0.15's Koopman closed form collapses to a point when c2 == n2 (e.g.
            # LR- with specificity 1); the inverse ratio's interval is fine there, and a ratio's
            # interval inverts monotonically (test_predictive.py checks both ends).
            c1, n1, c2, n2, inverse = c2, n2, c1, n1, True
    with np.errstate(all="ignore"):
        low, high = confint_proportions_2indep(
            c1, n1, c2, n2, compare="ratio", method=method, alpha=alpha
        )
        low = 0.0 if c1 == 0 else max(float(np.real(low)), 0.0)
        high = float(np.real(high))
        if inverse:
            low, high = 1.0 / high, (np.inf if low == 0 else 1.0 / low)
    return float(low), float(high)


def predictive_values(
    tp: int,
    fn: int,
    tn: int,
    fp: int,
    prevalence: float,
    level: float = 0.95,
    method: PredictiveMethod = "score",
    bounds_method: ProportionMethod = "wilson",
) -> PredictiveValues:
    """PPV and NPV at `prevalence` from sensitivity tp / (tp + fn) and specificity tn / (tn + fp).

    - "score" (default): the Koopman / Miettinen-Nurminen score interval of each likelihood
      ratio (statsmodels), defined with zero cells (no false positive: PPV upper bound 1);
    - "log": the delta method on log LR, i.e. Mercaldo, Lau & Zhou's (2007) logit interval;
      NaN with a zero cell;
    - "bounds": PPV in [PPV(se_lo, sp_lo), PPV(se_hi, sp_hi)] from the two-sided sensitivity
      and specificity intervals (`bounds_method`); conservative.
    Assumes independent images, sensitivity and specificity from disjoint images, and the
    prevalence known exactly (its uncertainty is not included)."""
    alpha = check_level(level)
    n1, n0 = tp + fn, tn + fp
    se = tp / n1 if n1 else float("nan")
    sp = tn / n0 if n0 else float("nan")
    ppv, npv = (float(v) for v in ppv_npv(se, sp, prevalence))
    nan = float("nan")
    if not (n1 and n0):
        return PredictiveValues(prevalence, ppv, nan, nan, npv, nan, nan, method)
    if method == "bounds":
        se_lo, se_hi = proportion_interval(tp, n1, level, bounds_method)
        sp_lo, sp_hi = proportion_interval(tn, n0, level, bounds_method)
        ppv_lo, npv_lo = ppv_npv(se_lo, sp_lo, prevalence)
        ppv_hi, npv_hi = ppv_npv(se_hi, sp_hi, prevalence)
    elif method in ("score", "log"):
        lrp = ratio_interval(tp, n1, fp, n0, alpha, method)
        lrn = ratio_interval(fn, n1, tn, n0, alpha, method)
        odds = prevalence / (1 - prevalence)
        with np.errstate(invalid="ignore", divide="ignore"):
            ppv_lo, ppv_hi = (1.0 if np.isinf(lr) else odds * lr / (1 + odds * lr) for lr in lrp)
            npv_hi, npv_lo = (0.0 if np.isinf(lr) else 1.0 / (1 + odds * lr) for lr in lrn)
    else:
        raise ValueError(f"unknown method {method!r}; choose score, log or bounds")
    ppv_lo, ppv_hi, npv_lo, npv_hi = (
        float(np.clip(b, 0.0, 1.0)) for b in (ppv_lo, ppv_hi, npv_lo, npv_hi)
    )
    if np.isnan(ppv):  # nobody referred: PPV undefined, and so is its interval
        ppv_lo = ppv_hi = nan
    if np.isnan(npv):  # everybody referred
        npv_lo = npv_hi = nan
    return PredictiveValues(prevalence, ppv, ppv_lo, ppv_hi, npv, npv_lo, npv_hi, method)

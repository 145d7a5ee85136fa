"""Calibration of P(referable), which the threshold and any PPV rest on, and temperature scaling.

- Binary ECE of P(grade >= 2): 15 equal-width bins of the score, sum over bins of
  (share of images) x |referable share - mean score|. ECE is biased upwards in small samples
  (noise alone moves each bin's mean away from its score); the evaluation states the bias its
  cluster bootstrap measures (mean of the resampled ECEs - ECE) beside it.
- Calibration intercept and slope (Cox 1958; Van Calster et al. 2016): logistic regressions of
  the referable outcome on logit P(referable); the slope from y ~ a + b logit(p) (1: ideal,
  < 1: over-confident), the intercept from y ~ a + offset(logit p) (0: ideal, < 0: scores too
  high on average). Wald intervals from statsmodels' Logit, cluster-robust by resampling unit
  when a unit holds several images.
- Temperature scaling (Guo et al. 2017): one T > 0 fitted on val by maximum likelihood of the
  grades, applied as softmax(log p / T); the argmax grade does not change.
"""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logit, softmax
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from retfound_hpo.metrics.calibration import ECE_BINS
from retfound_hpo.metrics.proportions import check_level, unit_codes

EPS = 1e-6  # scores are clipped to [EPS, 1 - EPS] before the logit: 0 and 1 have none


def score_bins(score: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin (N,) of each score; bin i holds (i/n, (i+1)/n], a score of 0 the first."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, score, side="left") - 1, 0, n_bins - 1)


def weighted_binary_ece(positive: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ECE of a binary score for B weightings (B, N) of the same images -> (B,)."""
    in_bin = np.eye(ECE_BINS)[score_bins(score)]  # (N, bins)
    outcome = weights @ (in_bin * np.asarray(positive, float)[:, None])  # (B, bins)
    predicted = weights @ (in_bin * np.asarray(score, float)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(outcome - predicted).sum(axis=1) / weights.sum(axis=1)


def _fit(y, exog, offset, groups, level):
    """(estimates, lows, highs) of a logistic regression, cluster-robust where groups are
    given; None where the fit does not converge or the outcome is perfectly separated (the
    slope is then not identified)."""
    kwargs = {"cov_type": "cluster", "cov_kwds": {"groups": groups}} if groups is not None else {}
    if offset is not None:  # start where the mean predicted equals the mean outcome
        kwargs["start_params"] = [logit(np.clip(y.mean(), EPS, 1 - EPS)) - np.mean(offset)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = sm.Logit(y, exog, offset=offset).fit(disp=0, **kwargs)
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):
            return None
    separated = any(issubclass(w.category, PerfectSeparationWarning) for w in caught)
    if separated or not result.mle_retvals.get("converged", False):
        return None
    ci = np.asarray(result.conf_int(alpha=check_level(level)))
    return np.asarray(result.params), ci[:, 0], ci[:, 1]


def calibration_slope_intercept(
    positive: np.ndarray, score: np.ndarray, units: np.ndarray | None = None, level: float = 0.95
) -> dict[str, float]:
    """`calibration_slope`, `calibration_intercept` and their `_ci_low` / `_ci_high`; NaN where
    the outcome has one class or a fit does not converge (perfect separation)."""
    keys = ("calibration_slope", "calibration_intercept")
    out = {f"{k}{s}": float("nan") for k in keys for s in ("", "_ci_low", "_ci_high")}
    y = np.asarray(positive, float)
    if y.min() == y.max():
        return out
    x = logit(np.clip(np.asarray(score, float), EPS, 1 - EPS))
    groups = None
    if units is not None:
        codes, sizes = unit_codes(units)
        groups = codes if sizes.max() > 1 else None
    slope = _fit(y, sm.add_constant(x, has_constant="add"), None, groups, level)
    intercept = _fit(y, np.ones((len(y), 1)), x, groups, level)
    for key, fit, i in ((keys[0], slope, 1), (keys[1], intercept, 0)):
        if fit is not None and all(np.isfinite(v[i]) for v in fit):
            out |= {key: float(fit[0][i]), f"{key}_ci_low": float(fit[1][i])}
            out[f"{key}_ci_high"] = float(fit[2][i])
    return out


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The T > 0 that minimises the negative log-likelihood of the grades under
    softmax(log p / T) (val grades and probabilities); bounded to [0.05, 20]."""
    logp = np.log(np.clip(np.asarray(probs, float), 1e-12, 1.0))
    y = np.asarray(y_true, int)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), in the probabilities' dtype."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))
    return softmax(logp / temperature, axis=1).astype(np.asarray(probs).dtype)

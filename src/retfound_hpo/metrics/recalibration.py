"""Calibration of P(referable), which the threshold and any PPV rest on, and temperature scaling.

- Binary ECE of P(grade >= 2): 15 equal-width bins of the score, sum over bins of
  (share of images) x |referable share - mean score|. ECE is biased upwards in small samples
  (noise alone moves each bin's mean away from its score); the evaluation states the bias its
  cluster bootstrap measures (mean of the resampled ECEs - ECE) beside it.
- Calibration intercept and slope (Cox 1958; Van Calster et al. 2016): logistic regressions of
  the referable outcome on logit P(referable); the slope from y ~ a + b logit(p) (1: ideal,
  < 1: over-confident), the intercept from y ~ a + offset(logit p) (0: ideal, < 0: scores too
  high on average). Wald intervals from statsmodels' GLM, cluster-robust by resampling unit when
  a unit holds several images.
- Temperature scaling (Guo et al. 2017): one T > 0 fitted on val by maximum likelihood of the
  grades, applied as softmax(log p / T); the argmax grade does not change.
"""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logit, softmax

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
    """(estimates, lows, highs) of a binomial GLM; cluster-robust where groups are given."""
    model = sm.GLM(y, exog, family=sm.families.Binomial(), offset=offset)
    kwargs = {"cov_type": "cluster", "cov_kwds": {"groups": groups}} if groups is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # perfect separation etc.: judged by the result below
        result = model.fit(**kwargs)
    ci = np.asarray(result.conf_int(alpha=check_level(level)))
    return np.asarray(result.params), ci[:, 0], ci[:, 1]


def calibration_slope_intercept(
    positive: np.ndarray, score: np.ndarray, units: np.ndarray | None = None, level: float = 0.95
) -> dict[str, float]:
    """`calibration_slope`, `calibration_intercept` and their `_ci_low` / `_ci_high`; NaN where
    the outcome has one class or the fit diverges (e.g. perfect separation)."""
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
    try:
        est, low, high = _fit(y, sm.add_constant(x, has_constant="add"), None, groups, level)
        out |= dict(
            zip(
                (keys[0], *[keys[0] + s for s in ("_ci_low", "_ci_high")]),
                (est[1], low[1], high[1]),
                strict=True,
            )
        )
        est, low, high = _fit(y, np.ones((len(y), 1)), x, groups, level)
        out |= dict(
            zip(
                (keys[1], *[keys[1] + s for s in ("_ci_low", "_ci_high")]),
                (est[0], low[0], high[0]),
                strict=True,
            )
        )
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError):
        return {k: float("nan") for k in out}
    if not all(np.isfinite(v) and abs(v) < 1e3 for v in out.values()):
        return {k: float("nan") for k in out}  # diverged: separation, not a calibration
    return {k: float(v) for k, v in out.items()}


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

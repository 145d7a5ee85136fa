"""DeLong's test for two correlated AUROCs (Obuchowski's clustered variant) and Holm's correction.

DeLong, DeLong & Clarke-Pearson (1988) with the fast midrank algorithm of Sun & Xu (2014);
Obuchowski (1997, Biometrics 53:567) where units hold several images. tests/metrics/
test_delong.py checks them against a brute-force implementation of the papers' definitions and
against MLstatkit's Delong_test; BENCHMARKS.md records the agreement with pROC's worked example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from retfound_hpo.metrics.proportions import check_level, unit_codes, unit_sums


@dataclass(frozen=True)
class DeLongResult:
    auc_a: float
    auc_b: float
    diff: float  # auc_b - auc_a (retfound-compare's B - A)
    se: float  # standard error of diff
    z: float  # diff / se
    p_value: float  # two-sided
    ci_low: float  # normal interval of diff at `level`
    ci_high: float
    method: str  # "delong" or "obuchowski"
    n_units: int  # units behind the variance (images for "delong")


def structural_components(
    positive: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aucs (k,), v10 (k, m), v01 (k, n)) from scores (k, N), by midranks.

    v10[r, i]: the share of negatives that positive i beats under score r (ties 1/2), DeLong's
    V10; v01[r, j]: the share of positives that beat negative j, V01."""
    positive = np.asarray(positive, bool)
    scores = np.atleast_2d(np.asarray(scores, float))
    m, n = int(positive.sum()), int((~positive).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative image")
    rank_all = stats.rankdata(scores, axis=1)
    v10 = (rank_all[:, positive] - stats.rankdata(scores[:, positive], axis=1)) / n
    v01 = 1.0 - (rank_all[:, ~positive] - stats.rankdata(scores[:, ~positive], axis=1)) / m
    return v10.mean(axis=1), v10, v01


def delong_covariance(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(aucs (k,), covariance (k, k)): S10 / m + S01 / n, sample covariances (ddof 1)."""
    aucs, v10, v01 = structural_components(positive, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs),) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs),) * 2)
    return aucs, s10 / m + s01 / n


def obuchowski_covariance(
    positive: np.ndarray, scores: np.ndarray, units: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(aucs (k,), covariance (k, k)) for clustered images (Obuchowski 1997).

    Components summed per unit u (m_u positives, n_u negatives; M, N in all; I units):
    D_u = (V10_u - m_u auc) / M + (V01_u - n_u auc) / N, cov = I / (I - 1) sum_u D_u D_u^T,
    which is S10 / M + S01 / N + 2 S11 / (M N). A unit may hold positives and negatives."""
    positive = np.asarray(positive, bool)
    aucs, v10, v01 = structural_components(positive, scores)
    codes, sizes = unit_codes(units)
    comp = np.zeros((len(aucs), len(positive)))
    comp[:, positive] = (v10 - aucs[:, None]) / v10.shape[1]
    comp[:, ~positive] = (v01 - aucs[:, None]) / v01.shape[1]
    if len(sizes) < 2:  # one unit: no between-unit variance to estimate
        return aucs, np.full((len(aucs),) * 2, np.nan)
    d = unit_sums(comp, codes, len(sizes))  # (k, I)
    return aucs, len(sizes) / (len(sizes) - 1) * d @ d.T


def _covariance(y: np.ndarray, scores: np.ndarray, units: np.ndarray | None):
    """Obuchowski's covariance where some unit holds several images, else DeLong's."""
    if units is not None and unit_codes(units)[1].max() > 1:
        aucs, cov = obuchowski_covariance(y, scores, units)
        return aucs, cov, "obuchowski", len(unit_codes(units)[1])
    aucs, cov = delong_covariance(y, scores)
    return aucs, cov, "delong", len(y)


def delong_test(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    level: float = 0.95,
    units: np.ndarray | None = None,
) -> DeLongResult:
    """DeLong's test that two AUROCs on the same images are equal, with a CI of auc_b - auc_a.

    z = diff / se, two-sided p, CI = diff -+ z_{alpha/2} se. Assumes independent images, or
    independent `units` (then Obuchowski's variance), and enough of both classes for the normal
    approximation. A zero variance (identical scores) gives z = 0 and p = 1 when diff = 0, as
    pROC does, else z = +-inf and p = 0; a single unit gives NaN."""
    alpha = check_level(level)
    y = np.asarray(y_true).astype(bool)
    scores = np.vstack([np.asarray(score_a, float), np.asarray(score_b, float)])
    aucs, cov, method, n_units = _covariance(y, scores, units)
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0))) if np.isfinite(var) else float("nan")
    if not np.isfinite(se):
        z = float("nan")  # not estimable (a single unit)
    elif se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    half = float(stats.norm.isf(alpha / 2) * se)
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        diff=diff,
        se=se,
        z=float(z),
        p_value=float(2.0 * stats.norm.sf(abs(z))),
        ci_low=diff - half,
        ci_high=diff + half,
        method=method,
        n_units=n_units,
    )


def auroc_interval(
    y_true: np.ndarray, score: np.ndarray, level: float = 0.95, units: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(auroc, low, high): the analytic alternative to the bootstrap, a normal interval on the
    logit scale with DeLong's (or Obuchowski's) variance; NaN bounds at auroc 0 or 1."""
    alpha = check_level(level)
    y = np.asarray(y_true).astype(bool)
    aucs, cov, _, _ = _covariance(y, np.asarray(score, float)[None, :], units)
    auc, var = float(aucs[0]), float(cov[0, 0])
    if not 0.0 < auc < 1.0 or var <= 0:
        return auc, float("nan"), float("nan")
    half = stats.norm.isf(alpha / 2) * np.sqrt(var) / (auc * (1 - auc))
    logit = np.log(auc / (1 - auc))
    return auc, float(stats.logistic.cdf(logit - half)), float(stats.logistic.cdf(logit + half))


def holm(pvalues: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(reject, adjusted p) by Holm's step-down method (statsmodels multipletests "holm"):
    family-wise error at alpha under any dependence. NaN p-values (undefined tests) are left
    out of the family and stay NaN, not rejected."""
    p = np.asarray(pvalues, float)
    reject, adjusted = np.zeros(p.shape, bool), np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        r, adj, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        reject[ok], adjusted[ok] = r, adj
    return reject, adjusted

"""Intervals for proportions (sensitivity, specificity, PPV, NPV, accuracy), plain and clustered.

`level` is two-sided throughout (0.95: 2.5 % in each tail). Functions take `(N,)` data or
`(B, N)` stacks that share the same images and units, returning `(B,)`. Undefined results are
NaN, never a zero-width interval. The binomial formulas are statsmodels' `proportion_confint`;
the one formula written here is Kish's design effect, from the cluster-robust variance that
tests/metrics/test_proportions.py checks against statsmodels' OLS `cov_type="cluster"`.
Coverage of each is measured by bench/interval_coverage.py (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from statsmodels.stats.proportion import proportion_confint

ProportionMethod = Literal["wilson", "clopper-pearson"]
PROPORTION_METHODS = ("wilson", "clopper-pearson")
_STATSMODELS_NAME = {"wilson": "wilson", "clopper-pearson": "beta"}


def check_level(level: float) -> float:
    """alpha = 1 - level, for a level in (0, 1)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return 1.0 - level


def proportion_interval(
    k: float | np.ndarray,
    n: float | np.ndarray,
    level: float = 0.95,
    method: ProportionMethod = "wilson",
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided interval for a binomial proportion k / n (k and n broadcast).

    Assumes n independent Bernoulli trials with one probability (one image, one trial; for
    correlated images use `clustered_proportion_interval`). "wilson" is Wilson's score interval,
    "clopper-pearson" the exact, conservative one. Neither collapses at k = 0 or k = n: 239 of
    239 gives Clopper-Pearson [0.9847, 1] and Wilson [0.9842, 1]. Non-integer counts are
    accepted (the clustered interval's effective counts). NaN where n = 0.
    """
    alpha = check_level(level)
    if method not in _STATSMODELS_NAME:
        raise ValueError(f"unknown method {method!r}; choose one of {PROPORTION_METHODS}")
    k_arr, n_arr = np.broadcast_arrays(np.asarray(k, float), np.asarray(n, float))
    if np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError("need 0 <= k <= n")
    empty = n_arr <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = proportion_confint(
            np.where(empty, 0.0, k_arr),
            np.where(empty, 1.0, n_arr),
            alpha=alpha,
            method=_STATSMODELS_NAME[method],
        )
    # At k = 0 (k = n) the lower (upper) end is exactly 0 (1): statsmodels' Wilson can give
    # 1 - 1e-16 there (e.g. 7 of 7), which would not cover a true proportion of 1.
    low = np.where(k_arr == 0, 0.0, np.clip(low, 0.0, 1.0))
    high = np.where(k_arr == n_arr, 1.0, np.clip(high, 0.0, 1.0))
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def proportion_lower_bound(
    k: float | np.ndarray,
    n: float | np.ndarray,
    level: float = 0.95,
    method: ProportionMethod = "wilson",
) -> np.ndarray:
    """One-sided lower confidence bound at `level`: the lower end of the two-sided interval at
    2 * level - 1 (so P(true p >= bound) is about `level`)."""
    alpha = check_level(level)
    return proportion_interval(k, n, level=1.0 - 2.0 * alpha, method=method)[0]


def unit_codes(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code 0..U-1 of each image's unit, images per unit (U,))."""
    codes, _ = pd.factorize(pd.Series(np.asarray(units)), use_na_sentinel=False)
    codes = np.asarray(codes, np.int64)
    return codes, np.bincount(codes, minlength=codes.max() + 1 if codes.size else 0)


def unit_sums(values: np.ndarray, codes: np.ndarray, n_units: int) -> np.ndarray:
    """Sum (..., N) values per unit: (..., U)."""
    values = np.asarray(values, float)
    n = values.shape[-1]
    membership = coo_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, n_units)).tocsc()
    flat = values.reshape(-1, n)
    return np.asarray((membership.T @ flat.T).T).reshape(*values.shape[:-1], n_units)


def cluster_variance_of_mean(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Cluster-robust variance of the mean of (..., N) values, units drawn independently:
    U / (U - 1) * sum_u (sum_{i in u} (x_i - mean))^2 / N^2, the linearisation variance of the
    ratio estimator. It equals statsmodels' OLS-on-a-constant `cov_type="cluster"` variance."""
    values = np.asarray(values, float)
    codes, sizes = unit_codes(units)
    n, n_units = values.shape[-1], len(sizes)
    if n_units < 2:  # one unit: nothing to estimate a between-unit variance from
        return np.full(values.shape[:-1], np.nan)
    resid = values - values.mean(axis=-1, keepdims=True)
    per_unit = unit_sums(resid, codes, n_units)
    return n_units / (n_units - 1) * (per_unit**2).sum(axis=-1) / n**2


@dataclass(frozen=True)
class ClusteredProportion:
    """Result of `clustered_proportion_interval`; arrays have the input's leading shape."""

    estimate: np.ndarray  # k / n
    low: np.ndarray
    high: np.ndarray
    n: int  # images
    n_units: int  # resampling units holding them
    deff: np.ndarray  # design effect used, in [1, deff_max]
    n_eff: np.ndarray  # effective sample size n / deff


def clustered_proportion_interval(
    successes: np.ndarray,
    units: np.ndarray,
    level: float = 0.95,
    method: ProportionMethod = "wilson",
    min_events: int = 3,
) -> ClusteredProportion:
    """Interval for a proportion over images grouped in correlated units (Kish design effect).

    successes: (N,) or (B, N) 0/1 per image (e.g. "referred" over the referable images for a
    sensitivity); units: (N,) each image's resampling unit.
    - deff = cluster-robust variance / binomial variance p (1 - p) / n, clipped to
      [1, deff_max] with deff_max = sum_u m_u^2 / n: 1 is independent images, deff_max what
      perfectly correlated units give (each unit counts once, weighted by its size);
    - with fewer than `min_events` minority outcomes (p = 0 or 1 included) or a single unit
      nothing measures the correlation (0 / 0, or an estimate of ~1 by construction), so
      deff_max is used; without
      this rule coverage at p = 0.97 with two eyes per patient was 92.5 % (with it 96.9 %);
    - the Wilson or Clopper-Pearson interval is taken on the effective counts (p n_eff, n_eff),
      n_eff = n / deff. With one image per unit deff = 1 and the result is the plain interval.
    Assumes units independent of each other (correlation lives within a unit).
    """
    y = np.asarray(successes, float)
    codes, sizes = unit_codes(units)
    n, n_units = y.shape[-1], len(sizes)
    if len(codes) != n:
        raise ValueError("successes and units differ in length")
    k = y.sum(axis=-1)
    p = k / n if n else np.full(k.shape, np.nan)
    if n == 0 or sizes.max() == 1:
        deff = np.ones_like(k)
    else:
        deff_max = float((sizes.astype(float) ** 2).sum() / n)
        var_cluster = cluster_variance_of_mean(y, units)
        var_binomial = p * (1.0 - p) / n
        # too few minority outcomes (or a single unit): the correlation is not measurable
        measurable = (np.minimum(k, n - k) >= max(min_events, 1)) & (n_units > 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            deff = np.where(measurable, var_cluster / var_binomial, deff_max)
        deff = np.clip(deff, 1.0, deff_max)
    n_eff = n / deff
    low, high = proportion_interval(p * n_eff, n_eff, level=level, method=method)
    return ClusteredProportion(p, low, high, n, n_units, deff, n_eff)


def clustered_lower_bound(
    successes: np.ndarray,
    units: np.ndarray | None,
    level: float = 0.95,
    method: ProportionMethod = "wilson",
) -> np.ndarray:
    """One-sided lower bound at `level` of a (possibly clustered) proportion."""
    y = np.asarray(successes, float)
    if units is None:
        return proportion_lower_bound(y.sum(axis=-1), y.shape[-1], level, method)
    two_sided = 1.0 - 2.0 * check_level(level)
    return clustered_proportion_interval(y, units, two_sided, method).low

"""The interval of a mean over training seeds: Student's t (default) or RETFound's 1.96.

It describes seed-to-seed variation (initialisation, data order, augmentation) around the mean
over seeds, not the sampling of test images that the other intervals describe.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.weightstats import DescrStatsW

from retfound_hpo.metrics.proportions import check_level

SeedMethod = Literal["t", "retfound_1.96"]
SEED_METHODS = ("t", "retfound_1.96")
RETFOUND_Z = 1.96  # RETFound's literal multiplier


def seed_interval_label(method: SeedMethod, n: int, level: float = 0.95) -> str:
    """What the interval is, in words, for metrics.json and the summary."""
    pct = f"{100 * level:g} %"
    if method == "t":
        return (
            f"{pct} t interval over {n} seeds: mean +- t(df {n - 1}) x SD / sqrt({n}), "
            "clipped to the metric's range"
        )
    return (
        f"RETFound's convention over {n} seeds: mean +- 1.96 x SD / sqrt({n}), clipped to the "
        f"metric's range; not a {pct} interval for few seeds (about 81 % at 3, 88 % at 5)"
    )


def seed_interval(
    values: np.ndarray,
    level: float = 0.95,
    method: SeedMethod = "t",
    lo: float | None = None,
    hi: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over seeds: values (n,) or (M, n) (one row per metric).

    - "t": mean +- t_{1-alpha/2, n-1} SD / sqrt(n) (statsmodels DescrStatsW.tconfint_mean),
      exact for i.i.d. normal per-seed values; n = 3 uses t = 4.303;
    - "retfound_1.96": RETFound's mean +- 1.96 SD / sqrt(n) (SD with ddof 1), which ignores
      that SD is estimated from n values (other levels use the normal quantile).
    Bounds are clipped to [lo, hi], the metric's range, when given. NaN for a row with fewer
    than 2 values or a non-finite one.
    """
    alpha = check_level(level)
    if method not in SEED_METHODS:
        raise ValueError(f"unknown seed interval {method!r}; choose one of {SEED_METHODS}")
    x = np.asarray(values, float)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    mean, low, high = (np.full(len(x), np.nan) for _ in range(3))
    ok = np.isfinite(x).all(axis=1) & (x.shape[1] >= 2)
    if ok.any():
        d = DescrStatsW(x[ok].T)  # columns are the rows of x
        mean[ok] = np.asarray(d.mean, float)
        if method == "t":
            lo_t, hi_t = d.tconfint_mean(alpha=alpha)
            low[ok], high[ok] = np.asarray(lo_t, float), np.asarray(hi_t, float)
        else:
            z = RETFOUND_Z if np.isclose(level, 0.95) else stats.norm.isf(alpha / 2)
            half = z * np.asarray(d.std_mean, float)  # SD (ddof 1) / sqrt(n)
            low[ok], high[ok] = mean[ok] - half, mean[ok] + half
    if lo is not None or hi is not None:
        low, high = np.clip(low, lo, hi), np.clip(high, lo, hi)
    return (mean[0], low[0], high[0]) if single else (mean, low, high)

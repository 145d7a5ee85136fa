"""Binomial and clustered intervals of proportions, against statsmodels."""

import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.stats.proportion import proportion_confint

from retfound_hpo.metrics.proportions import (
    cluster_variance_of_mean,
    clustered_lower_bound,
    clustered_proportion_interval,
    proportion_interval,
    proportion_lower_bound,
)


@pytest.mark.parametrize("method,sm_name", [("wilson", "wilson"), ("clopper-pearson", "beta")])
def test_proportion_interval_equals_statsmodels(method, sm_name):
    for n in (1, 2, 7, 30, 239, 1000):
        k = np.arange(n + 1)
        low, high = proportion_interval(k, n, 0.95, method)
        ref_low, ref_high = proportion_confint(k, n, alpha=0.05, method=sm_name)
        np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-12)
        np.testing.assert_allclose(high, ref_high, rtol=0, atol=1e-12)
        assert np.all(high - low > 0), "zero-width interval"


def test_proportion_interval_at_the_boundary():
    # domain B's specificity, 239 of 239: an exact interval, not [1, 1]
    low, high = proportion_interval(239, 239, method="clopper-pearson")
    assert float(low) == pytest.approx(0.025 ** (1 / 239), abs=1e-12) and high == 1.0
    assert round(float(low), 3) == 0.985
    low, high = proportion_interval(0, 30, method="clopper-pearson")
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 30), abs=1e-12)
    for n in range(1, 300):  # exactly 1 at k = n (statsmodels' Wilson gives 1 - 1e-16 for some n)
        assert proportion_interval(n, n, method="wilson")[1] == 1.0
    low, high = proportion_interval(np.array([0, 3]), np.array([0, 30]))
    assert np.isnan(low[0]) and np.isnan(high[0]) and np.isfinite(low[1])
    with pytest.raises(ValueError):
        proportion_interval(5, 4)
    # one-sided lower bound = the lower end of the two-sided interval at 2 * level - 1
    assert proportion_lower_bound(27, 30, 0.95, "clopper-pearson") == pytest.approx(
        proportion_confint(27, 30, alpha=0.10, method="beta")[0], abs=1e-12
    )


def test_cluster_variance_equals_statsmodels_cluster_robust():
    rng = np.random.default_rng(3)
    units = rng.integers(0, 40, size=100)
    y = (rng.random(100) < 0.7).astype(float)
    fit = sm.OLS(y, np.ones(len(y))).fit(cov_type="cluster", cov_kwds={"groups": units})
    assert cluster_variance_of_mean(y, units) == pytest.approx(fit.bse[0] ** 2, rel=1e-12)


def test_clustered_equals_plain_without_clustering():
    y = np.random.default_rng(0).random(239) < 0.9
    for method in ("wilson", "clopper-pearson"):
        res = clustered_proportion_interval(y, np.arange(239), method=method)
        low, high = proportion_interval(y.sum(), 239, method=method)
        assert res.deff == 1.0 and res.n_eff == 239 and res.n_units == 239
        assert float(res.low) == float(low) and float(res.high) == float(high)


def test_a_duplicated_photograph_widens_the_interval():
    y = np.random.default_rng(1).random(180) < 0.8
    dup = np.arange(60)  # 60 photographs present twice
    y2, units = np.r_[y, y[dup]], np.r_[np.arange(180), dup]
    naive_low, naive_high = proportion_interval(y2.sum(), len(y2))
    res = clustered_proportion_interval(y2, units)
    assert res.n_units == 180 and res.deff > 1.0 and res.n_eff < len(y2)
    assert res.high - res.low > naive_high - naive_low
    # the cap: sum(m_u^2) / n = (120 + 60 * 4) / 240 = 1.5, each copy fully correlated
    assert res.deff <= 1.5 + 1e-12


def test_clustered_never_collapses_at_0_and_1():
    units = np.repeat(np.arange(120), 2)
    for value, method in ((1.0, "wilson"), (0.0, "clopper-pearson")):
        res = clustered_proportion_interval(np.full(240, value), units, method=method)
        assert res.high - res.low > 0.02
        assert res.deff == 2.0 and res.n_eff == 120  # each patient counts once
    assert clustered_proportion_interval(np.ones((3, 240)), units).low.shape == (3,)
    # fewer than 3 minority outcomes: the correlation is not measurable, deff_max is used
    y = np.ones(240)
    y[[0, 10]] = 0
    assert clustered_proportion_interval(y, units).deff == 2.0
    assert clustered_proportion_interval(y, units, min_events=0).deff < 2.0
    y[[0, 10, 20]] = 0
    assert clustered_proportion_interval(y, units).deff < 2.0
    # one-sided bounds, stacked, plain and clustered
    hits = np.ones((2, 240))
    assert clustered_lower_bound(hits, None).shape == (2,)
    assert (clustered_lower_bound(hits, units) < clustered_lower_bound(hits, None)).all()


def test_a_single_unit_counts_once():
    """Both eyes of one exam (e.g. the only grade-4 images of a data set): one unit, n_eff 1."""
    res = clustered_proportion_interval(np.array([1.0, 0.0]), np.array(["e1", "e1"]))
    assert res.n_units == 1 and res.deff == 2.0 and res.n_eff == 1.0
    assert 0 < res.low < 0.5 < res.high < 1
    assert np.isnan(cluster_variance_of_mean(np.array([1.0, 0.0]), np.array([0, 0])))

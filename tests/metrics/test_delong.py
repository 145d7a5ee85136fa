"""DeLong's test against a brute-force implementation of DeLong, DeLong & Clarke-Pearson (1988)
and of Obuchowski (1997), and against MLstatkit's Delong_test; Holm against statsmodels."""

import numpy as np
import pytest
from MLstatkit import Delong_test
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from retfound_hpo.metrics.delong import auroc_interval, delong_covariance, delong_test, holm


def _psi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """DeLong 1988: psi(X, Y) = 1 if X > Y, 1/2 if X = Y, 0 if X < Y; an (m, n) matrix."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def brute_delong(y, a, b) -> tuple[float, float, float]:
    """(auc_a, auc_b, var(auc_b - auc_a)) from the 1988 definitions: V10(X_i) = mean_j psi,
    V01(Y_j) = mean_i psi, S10 and S01 their covariances (ddof 1), S = S10 / m + S01 / n."""
    pos = y.astype(bool)
    m, n = pos.sum(), (~pos).sum()
    v10, v01, th = [], [], []
    for s in (a, b):
        psi = _psi(s[pos], s[~pos])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        th.append(psi.mean())
    s10, s01 = np.zeros((2, 2)), np.zeros((2, 2))
    for r in range(2):
        for t in range(2):
            s10[r, t] = ((v10[r] - th[r]) * (v10[t] - th[t])).sum() / (m - 1)
            s01[r, t] = ((v01[r] - th[r]) * (v01[t] - th[t])).sum() / (n - 1)
    cov = s10 / m + s01 / n
    return th[0], th[1], cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def brute_obuchowski(y, a, b, units) -> float:
    """var(auc_b - auc_a) from Obuchowski (1997): per cluster i, V10_i sums V10 over its
    positives, V01_i over its negatives; S10 = I/((I-1)M) sum (V10_i - m_i th)^2, S01 likewise,
    S11 = I/(I-1) sum (V10_i - m_i th)(V01_i - n_i th); var = S10/M + S01/N + 2 S11/(M N)."""
    pos = y.astype(bool)
    psi = _psi(b[pos], b[~pos]) - _psi(a[pos], a[~pos])
    big_m, big_n = psi.shape
    th = psi.mean()
    v10_img, v01_img = psi.mean(axis=1), psi.mean(axis=0)
    clusters = np.unique(units)
    s10 = s01 = s11 = 0.0
    for c in clusters:
        in_pos, in_neg = units[pos] == c, units[~pos] == c
        d10 = v10_img[in_pos].sum() - in_pos.sum() * th
        d01 = v01_img[in_neg].sum() - in_neg.sum() * th
        s10, s01, s11 = s10 + d10**2, s01 + d01**2, s11 + d10 * d01
    f = len(clusters) / (len(clusters) - 1)
    return f * s10 / big_m**2 + f * s01 / big_n**2 + 2 * f * s11 / (big_m * big_n)


def random_pair(seed: int, n: int = 150, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    a = rng.normal(size=n) + 1.2 * y
    b = 0.6 * a + 0.8 * rng.normal(size=n) + 0.5 * y
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_delong_equals_brute_force(seed, ties):
    y, a, b = random_pair(seed, ties=ties)
    res = delong_test(y, a, b)
    auc_a, auc_b, var = brute_delong(y, a, b)
    assert abs(res.auc_a - auc_a) < 1e-12 and abs(res.auc_b - auc_b) < 1e-12
    assert abs(res.se**2 - var) < 1e-12
    assert abs(res.z - (auc_b - auc_a) / np.sqrt(var)) < 1e-6
    assert res.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert res.method == "delong" and res.n_units == len(y)


@pytest.mark.parametrize("seed", range(4))
def test_delong_equals_mlstatkit(seed):
    y, a, b = random_pair(seed, n=120 + 30 * seed, ties=seed % 2 == 1)
    res = delong_test(y, a, b)
    z, p, _, _, auc_a, auc_b, info = Delong_test(y.astype(int), a, b)
    assert info["method"] == "delong"
    assert abs(res.z - z) < 1e-6 and abs(res.p_value - p) < 1e-6
    assert abs(res.se**2 - info["var_diff"]) < 1e-12


def test_identical_curves_no_positive_and_a_single_unit():
    y, a, b = random_pair(5)
    res = delong_test(y, a, a)
    assert res.z == 0.0 and res.p_value == 1.0
    one = delong_test(y, a, b, units=np.zeros(len(y)))  # every image in one unit
    assert np.isnan(one.se) and np.isnan(one.p_value) and one.n_units == 1
    with pytest.raises(ValueError, match="at least one positive"):
        delong_test(np.zeros(5, bool), np.arange(5.0), np.arange(5.0))


@pytest.mark.parametrize("seed", range(2))
def test_obuchowski_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    units = np.repeat(np.arange(60), 2)[: 110 + seed]  # pairs of eyes, some single
    rng.shuffle(units)
    y, a, b = random_pair(seed + 10, n=len(units), ties=seed == 1)
    res = delong_test(y, a, b, units=units)
    assert res.method == "obuchowski" and res.n_units == len(np.unique(units))
    assert abs(res.se**2 - brute_obuchowski(y, a, b, units)) < 1e-12
    plain = delong_test(y, a, b, units=np.arange(len(y)))  # no clustering: DeLong exactly
    assert plain.method == "delong" and plain.se == delong_test(y, a, b).se


def test_auroc_interval_on_the_logit_scale():
    y, a, _ = random_pair(4, n=200)
    auc, low, high = auroc_interval(y, a)
    var = delong_covariance(y, a[None, :])[1][0, 0]
    assert low < auc < high and auc == pytest.approx(roc_auc_score(y, a))
    half = np.log(high / (1 - high)) - np.log(auc / (1 - auc))
    assert half == pytest.approx(1.959963984540054 * np.sqrt(var) / (auc * (1 - auc)))
    assert np.isnan(auroc_interval(y, y.astype(float))[1])  # perfect separation


def test_holm_matches_statsmodels_and_skips_nan():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    reject, adj = holm(p)
    ref = multipletests(p, method="holm")
    assert (reject == ref[0]).all() and np.allclose(adj, ref[1])
    reject, adj = holm(np.r_[p, np.nan])
    assert np.isnan(adj[-1]) and not reject[-1] and np.allclose(adj[:-1], ref[1])

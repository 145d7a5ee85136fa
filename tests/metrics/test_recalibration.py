"""Calibration of P(referable): binary ECE, slope and intercept; temperature scaling."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.special import logit

from retfound_hpo.metrics.recalibration import (
    apply_temperature,
    calibration_slope_intercept,
    fit_temperature,
    weighted_binary_ece,
)


def calibrated(n: int, seed: int, slope: float = 1.0):
    """Scores and outcomes drawn from logit P(y) = slope x logit(score)."""
    rng = np.random.default_rng(seed)
    score = rng.beta(1.0, 1.5, n)
    p = 1 / (1 + np.exp(-slope * logit(np.clip(score, 1e-6, 1 - 1e-6))))
    return rng.random(n) < p, score


def test_binary_ece_by_hand():
    positive = np.array([1, 0, 1, 1], bool)
    score = np.array([0.05, 0.05, 0.95, 0.95])  # bins 0 and 14: |0.5 - 0.05|, |1 - 0.95|
    ece = weighted_binary_ece(positive, score, np.ones((1, 4)))[0]
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    twice = weighted_binary_ece(positive, score, np.array([[2.0, 0, 1, 1]]))[0]
    assert twice == pytest.approx(0.5 * 0.95 + 0.5 * 0.05)  # bin 0: image 0 twice, no image 1


def test_slope_and_intercept_against_statsmodels_and_the_truth():
    y, score = calibrated(2000, 0, slope=0.5)  # over-confident scores: slope ~0.5
    c = calibration_slope_intercept(y, score)
    fit = sm.Logit(y.astype(float), sm.add_constant(logit(score))).fit(disp=0)
    assert c["calibration_slope"] == pytest.approx(fit.params[1], rel=1e-6)
    assert c["calibration_slope_ci_low"] < 0.5 < c["calibration_slope_ci_high"]
    good = calibration_slope_intercept(*calibrated(2000, 1))
    assert good["calibration_slope_ci_low"] < 1 < good["calibration_slope_ci_high"]
    assert good["calibration_intercept_ci_low"] < 0 < good["calibration_intercept_ci_high"]
    # clustered: two copies of each image widen the interval
    y2, s2 = np.r_[y[:500], y[:500]], np.r_[score[:500], score[:500]]
    plain = calibration_slope_intercept(y2, s2)
    paired = calibration_slope_intercept(y2, s2, units=np.r_[np.arange(500), np.arange(500)])
    width = lambda c: c["calibration_slope_ci_high"] - c["calibration_slope_ci_low"]  # noqa: E731
    assert width(paired) > 1.3 * width(plain)
    assert np.isnan(calibration_slope_intercept(np.ones(10, bool), score[:10])["calibration_slope"])
    # perfectly separated: the slope is not identified (NaN), the intercept still is
    separated = calibration_slope_intercept(score[:40] > 0.4, score[:40])
    assert np.isnan(separated["calibration_slope"]) and np.isnan(
        separated["calibration_slope_ci_low"]
    )


def test_steep_but_identified_slope_keeps_its_clustered_interval():
    """Scores squeezed into a narrow band (the demo's camera B): the slope is large, and the
    cluster-robust interval exists (GLM's sandwich gave NaN there)."""
    rng = np.random.default_rng(3)
    x = rng.normal(-3.0, 0.3, 400)  # logit of the score: all near 0.05
    truth = rng.random(400) < 1 / (1 + np.exp(-(20 + 7 * x)))  # true slope 7
    score = 1 / (1 + np.exp(-x))
    truth[:20], score[:20] = False, 1e-8  # a few sure negatives: fitted P(referable) ~1e-35
    c = calibration_slope_intercept(truth, score, units=np.arange(400) // 2)
    assert c["calibration_slope_ci_low"] < 7 < c["calibration_slope_ci_high"]
    assert c["calibration_slope_ci_low"] < c["calibration_slope"] < c["calibration_slope_ci_high"]


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3000, 5)) * 2
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in truth])
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    t = fit_temperature(y, overconfident.astype(np.float32))
    assert t == pytest.approx(3.0, rel=0.1)
    scaled = apply_temperature(overconfident.astype(np.float32), t)
    assert scaled.dtype == np.float32 and np.allclose(scaled.sum(axis=1), 1, atol=1e-5)
    assert (scaled.argmax(axis=1) == overconfident.argmax(axis=1)).all()

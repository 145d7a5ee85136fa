"""PPV and NPV at a stated prevalence, with likelihood-ratio intervals (statsmodels)."""

import numpy as np
import pytest
from statsmodels.stats.proportion import test_proportions_2indep as score_test_2indep

from retfound_hpo.metrics.predictive import predictive_values, ratio_interval


def test_bayes_rule_and_every_method():
    res = predictive_values(tp=60, fn=7, tn=135, fp=23, prevalence=0.1)
    se, sp = 60 / 67, 135 / 158
    assert res.ppv == pytest.approx(se * 0.1 / (se * 0.1 + (1 - sp) * 0.9))
    assert res.npv == pytest.approx(sp * 0.9 / (sp * 0.9 + (1 - se) * 0.1))
    for method in ("score", "log", "bounds"):
        r = predictive_values(60, 7, 135, 23, 0.1, method=method)
        assert r.ppv_low < r.ppv < r.ppv_high and r.npv_low < r.npv < r.npv_high
    # no false positive: PPV 1, with a lower bound below it; Mercaldo's logit is undefined
    r = predictive_values(60, 7, 158, 0, 0.1)
    assert r.ppv == 1.0 and r.ppv_high == 1.0 and r.ppv_low < 0.9
    assert np.isnan(predictive_values(60, 7, 158, 0, 0.1, method="log").ppv_low)
    # effective (non-integer) counts, as the clustered evaluation passes them
    r = predictive_values(30.5, 3.5, 67.5, 11.5, 0.1)
    assert r.ppv_low < r.ppv < r.ppv_high


@pytest.mark.parametrize("counts", [(60, 67, 23, 158), (7, 67, 158, 158), (7, 67, 157, 158)])
def test_ratio_score_interval_inverts_the_score_test(counts):
    """Both ends of the ratio's interval are where statsmodels' score test has p = 0.05 (this
    also checks the inverse-ratio route taken when the second proportion is 1)."""
    low, high = ratio_interval(*counts, alpha=0.05, method="score")
    for value in (low, high):
        res = score_test_2indep(*counts, value=value, compare="ratio", method="score")
        assert res.pvalue == pytest.approx(0.05, abs=1e-6)


def test_everyone_or_nobody_referred_is_never_a_zero_width_interval():
    everyone = predictive_values(tp=10, fn=0, tn=0, fp=30, prevalence=0.078)
    assert everyone.ppv == pytest.approx(0.078)  # se 1, sp 0: PPV is the prevalence
    assert everyone.ppv_low < 0.078 < everyone.ppv_high
    assert np.isnan([everyone.npv, everyone.npv_low, everyone.npv_high]).all()  # undefined
    nobody = predictive_values(tp=0, fn=10, tn=30, fp=0, prevalence=0.078)
    assert nobody.npv == pytest.approx(0.922) and nobody.npv_low < nobody.npv < nobody.npv_high
    assert np.isnan([nobody.ppv, nobody.ppv_low, nobody.ppv_high]).all()

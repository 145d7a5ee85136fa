"""The interval over seeds: Student's t by default, RETFound's 1.96 as an option."""

import numpy as np
import pytest
from scipy import stats

from retfound_hpo.metrics.seeds import seed_interval, seed_interval_label


def test_t_and_retfound_intervals():
    v = np.array([0.80, 0.82, 0.85])
    mean, low, high = seed_interval(v)
    t_2 = (high - low) / 2 / (v.std(ddof=1) / np.sqrt(3))
    assert round(t_2, 3) == 4.303 and t_2 == pytest.approx(stats.t.ppf(0.975, 2), abs=1e-12)
    assert mean == pytest.approx(v.mean())
    _, low_r, high_r = seed_interval(v, method="retfound_1.96")
    assert (high_r - low_r) / 2 == pytest.approx(1.96 * v.std(ddof=1) / np.sqrt(3), abs=1e-12)
    # clipped to the metric's range: 1.96 x SD / sqrt(3) no longer passes 1
    _, low_c, high_c = seed_interval(np.array([0.97, 0.99, 1.0]), lo=0.0, hi=1.0)
    assert high_c == 1.0 and low_c < 0.97
    m, lo, hi = seed_interval(np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 2.0]]))
    assert np.isfinite(lo[0]) and np.isnan(lo[1]) and np.isnan(seed_interval(v[:1])[1])
    with pytest.raises(ValueError, match="unknown seed interval"):
        seed_interval(v, method="z")


def test_labels_say_what_the_interval_is():
    assert "t(df 2)" in seed_interval_label("t", 3)
    assert "not a 95 % interval" in seed_interval_label("retfound_1.96", 3)

"""One dataset's metrics.json entry: what an interval may claim."""

import math

import numpy as np
import pandas as pd

from retfound_hpo.evaluation.dataset_metrics import IntervalSettings, dataset_metrics


def test_a_statistic_that_no_resample_moves_gets_no_interval():
    # A model that predicts grade 0 for every image: kappa is 0 in every resample, by
    # construction. A "0.000 [0.000, 0.000]" would claim a certainty the data do not give.
    rng = np.random.default_rng(0)
    n = 120
    grades = rng.integers(0, 5, n)
    probs = np.tile([0.6, 0.1, 0.1, 0.1, 0.1], (n, 1)) + rng.normal(0, 0.01, (n, 5))
    probs /= probs.sum(axis=1, keepdims=True)
    table = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "true_grade": grades})
    for c in range(5):
        table[f"prob_{c}"] = probs[:, c].astype(np.float32)
    table["unit"] = table["id"]
    m = dataset_metrics(table, None, IntervalSettings(bootstrap_samples=200, seed=1))
    assert m["kappa"] == 0
    assert math.isnan(m["kappa_ci_low"]) and math.isnan(m["kappa_ci_high"])
    assert m["auroc_ci_low"] < m["auroc"] < m["auroc_ci_high"]  # a statistic that varies keeps one

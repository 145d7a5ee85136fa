import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from retfound_hpo.metrics import (
    bootstrap_indices,
    bootstrap_intervals,
    classification_metrics,
    evaluation_metrics,
)


def one_hot(pred, n=5):
    probs = np.full((len(pred), n), 0.01)
    probs[np.arange(len(pred)), pred] = 0.96
    return probs


def test_perfect_predictions():
    y = np.array([0, 1, 2, 3, 4, 0])
    m = classification_metrics(y, one_hot(y))
    assert m["accuracy"] == 100.0 and m["kappa"] == pytest.approx(1.0)
    assert m["auroc"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0)
    assert m["referable_sensitivity"] == 1.0 and m["referable_specificity"] == 1.0


def test_hand_computed_values():
    y = np.array([0, 0, 1, 2])
    pred = np.array([0, 1, 1, 0])
    m = classification_metrics(y, one_hot(pred))
    assert m["accuracy"] == 50.0
    # quadratic kappa by hand: O and E over grades 0-2, weights (i-j)^2 / 4^2 over 5 labels
    observed = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]]) / 4
    expected = np.outer([2, 1, 1], [2, 2, 0]) / 16
    w = np.array([[(i - j) ** 2 for j in range(3)] for i in range(3)])
    assert m["kappa"] == pytest.approx(1 - (w * observed).sum() / (w * expected).sum())
    assert m["referable_sensitivity"] == 0.0 and m["referable_specificity"] == 1.0


def test_auroc_skips_absent_grades():
    y = np.array([0, 0, 1, 1])
    probs = np.zeros((4, 5))
    probs[:, 0] = [0.9, 0.8, 0.3, 0.2]
    probs[:, 1] = 1 - probs[:, 0]
    assert classification_metrics(y, probs)["auroc"] == pytest.approx(1.0)


# Evaluation metrics and bootstrap intervals (evaluate-cross-dataset)


def random_case(n: int, seed: int):
    """Random grades and probabilities rounded to 0.1, so that AUROC sees many tied scores."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, n), rng.dirichlet(np.ones(5), n).round(1) + 1e-3


@pytest.mark.parametrize("n, seed", [(8, 0), (60, 1), (300, 2)])
def test_evaluation_metrics_agree_with_sklearn(n, seed):
    y, probs = random_case(n, seed)
    fast, full = classification_metrics(y, probs), evaluation_metrics(y, probs)
    for name, value in fast.items():
        assert full[name] == pytest.approx(value, abs=1e-12), name
    referable = y >= 2
    assert full["referable_auroc"] == pytest.approx(
        roc_auc_score(referable, probs[:, 2:].sum(axis=1)), abs=1e-12
    )


def test_per_grade_sensitivity_and_referable_auroc_by_hand():
    y = np.array([0, 0, 1, 2, 2, 3])
    pred = np.array([0, 1, 1, 2, 0, 4])
    probs = one_hot(pred)
    # P(grade >= 2) per image: 0.03 for a 0/1 prediction, 0.98 for a 2-4 prediction
    m = evaluation_metrics(y, probs)
    assert m["sensitivity_grade_0"] == 0.5 and m["sensitivity_grade_1"] == 1.0
    assert m["sensitivity_grade_2"] == 0.5 and m["sensitivity_grade_3"] == 0.0
    assert np.isnan(m["sensitivity_grade_4"])  # no grade-4 image: undefined, not 0
    # referable positives (grades 2, 2, 3) score 0.98, 0.03, 0.98; negatives 0.03, 0.03, 0.03:
    # of 9 pairs, 6 wins and 3 ties (0.03 vs 0.03) -> (6 + 3/2) / 9
    assert m["referable_auroc"] == pytest.approx(7.5 / 9)
    assert m["referable_sensitivity"] == pytest.approx(2 / 3)
    assert m["referable_specificity"] == 1.0


def brute_force_metrics(y, probs):
    """The same metrics the slow way: sklearn and plain Python, one resample at a time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns where kappa is undefined
        m = classification_metrics(y, probs)
    referable = y >= 2
    m["referable_auroc"] = (
        roc_auc_score(referable, probs[:, 2:].sum(axis=1))
        if 0 < referable.sum() < len(y)
        else np.nan
    )
    pred = probs.argmax(axis=1)
    for c in range(5):
        m[f"sensitivity_grade_{c}"] = (pred[y == c] == c).mean() if (y == c).any() else np.nan
    return m


def test_bootstrap_intervals_match_a_brute_force_loop():
    y, probs = random_case(15, seed=3)
    n_resamples, seed = 200, 7
    fast = bootstrap_intervals(y, probs, n_resamples, seed)
    rows = np.concatenate(list(bootstrap_indices(len(y), n_resamples, seed)))
    assert rows.shape == (n_resamples, len(y))
    per_resample = [brute_force_metrics(y[idx], probs[idx]) for idx in rows]
    for name in evaluation_metrics(y, probs):
        values = np.array([m[name] for m in per_resample], dtype=float)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [2.5, 97.5])
        assert fast[f"{name}_ci_n"] == len(values), name
        assert fast[f"{name}_ci_low"] == pytest.approx(low, abs=1e-9), name
        assert fast[f"{name}_ci_high"] == pytest.approx(high, abs=1e-9), name
    # 15 images: some resamples miss a grade, and are skipped for that grade only
    assert min(fast[f"sensitivity_grade_{c}_ci_n"] for c in range(5)) < n_resamples
    assert fast["accuracy_ci_n"] == n_resamples


def test_bootstrap_interval_by_hand():
    # Two images, one right and one wrong: a resample scores 0 % (both draws the wrong one,
    # p = 1/4), 50 % (p = 1/2) or 100 % (p = 1/4); the 2.5th and 97.5th percentiles of 4000
    # such resamples are 0 and 100.
    y, probs = np.array([0, 1]), one_hot(np.array([0, 0]))
    ci = bootstrap_intervals(y, probs, n_resamples=4000, seed=0)
    assert (ci["accuracy_ci_low"], ci["accuracy_ci_high"], ci["accuracy_ci_n"]) == (0, 100, 4000)
    # Grade-1 sensitivity is 0 whenever defined: defined where image 1 was drawn at all
    drew_grade_1 = sum(int((idx == 1).any(axis=1).sum()) for idx in bootstrap_indices(2, 4000, 0))
    assert ci["sensitivity_grade_1_ci_n"] == drew_grade_1
    assert 2800 < drew_grade_1 < 3200  # 3/4 of 4000
    assert ci["sensitivity_grade_1_ci_low"] == ci["sensitivity_grade_1_ci_high"] == 0.0
    assert ci["sensitivity_grade_4_ci_n"] == 0 and np.isnan(ci["sensitivity_grade_4_ci_low"])


def test_bootstrap_is_seeded():
    y, probs = random_case(40, seed=4)
    a = bootstrap_intervals(y, probs, 200, seed=1)
    assert a == bootstrap_intervals(y, probs, 200, seed=1)
    assert a != bootstrap_intervals(y, probs, 200, seed=2)

import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from retfound_hpo.metrics import bootstrap
from retfound_hpo.metrics.bootstrap import bootstrap_indices
from retfound_hpo.metrics.classification import classification_metrics, evaluation_metrics


def one_hot(pred, n=5):
    probs = np.full((len(pred), n), 0.01)
    probs[np.arange(len(pred)), pred] = 0.96
    return probs


def test_perfect_predictions():
    y = np.array([0, 1, 2, 3, 4, 0])
    m = classification_metrics(y, one_hot(y))
    assert m["accuracy"] == 100.0 and m["kappa"] == pytest.approx(1.0)
    assert m["auroc"] == pytest.approx(1.0) and m["f1"] == pytest.approx(1.0)
    assert m["retfound"] == pytest.approx(1.0)
    assert m["argmax_referable_sensitivity"] == 1.0 and m["argmax_referable_specificity"] == 1.0


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
    # unweighted: agreement 2/4, chance agreement (2*2 + 1*2 + 1*0) / 16
    assert m["kappa_unweighted"] == pytest.approx((0.5 - 6 / 16) / (1 - 6 / 16))
    assert m["argmax_referable_sensitivity"] == 0.0 and m["argmax_referable_specificity"] == 1.0


def test_auroc_skips_absent_grades():
    y = np.array([0, 0, 1, 1])
    probs = np.zeros((4, 5))
    probs[:, 0] = [0.9, 0.8, 0.3, 0.2]
    probs[:, 1] = 1 - probs[:, 0]
    assert classification_metrics(y, probs)["auroc"] == pytest.approx(1.0)


def random_case(n: int, seed: int):
    """Random grades and probabilities rounded to 0.1, so that AUROC sees many tied scores."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, n), rng.dirichlet(np.ones(5), n).round(1) + 1e-3


@pytest.mark.parametrize("n, seed", [(60, 1), (300, 2)])
def test_retfound_score_is_its_formula_from_sklearn(n, seed):
    # RETFound's misc.py: (macro F1 + macro one-vs-rest AUROC + unweighted Cohen's kappa) / 3
    y, probs = random_case(n, seed)
    probs /= probs.sum(axis=1, keepdims=True)  # sklearn's multi-class AUROC wants rows summing to 1
    assert set(np.unique(y)) == set(range(5))
    pred = probs.argmax(axis=1)
    expected = (
        f1_score(y, pred, average="macro")
        + roc_auc_score(y, probs, multi_class="ovr", average="macro")
        + cohen_kappa_score(y, pred)
    ) / 3
    assert classification_metrics(y, probs)["retfound"] == pytest.approx(expected, abs=1e-12)
    assert evaluation_metrics(y, probs)["retfound"] == pytest.approx(expected, abs=1e-12)


# Evaluation metrics and bootstrap intervals (evaluate-cross-dataset)


@pytest.mark.parametrize("n, seed", [(8, 0), (60, 1), (300, 2)])
def test_evaluation_metrics_agree_with_sklearn(n, seed):
    y, probs = random_case(n, seed)
    fast, full = classification_metrics(y, probs), evaluation_metrics(y, probs, threshold=0.5)
    for name in ("accuracy", "kappa", "kappa_unweighted", "auroc", "f1", "retfound"):
        assert full[name] == pytest.approx(fast[name], abs=1e-12), name
    referable = y >= 2
    assert full["referable_auroc"] == pytest.approx(
        roc_auc_score(referable, probs[:, 2:].sum(axis=1)), abs=1e-12
    )


def test_per_grade_sensitivity_and_referable_figures_by_hand():
    y = np.array([0, 0, 1, 2, 2, 3])
    pred = np.array([0, 1, 1, 2, 0, 4])
    probs = one_hot(pred)
    # P(grade >= 2) per image: 0.03 for a 0/1 prediction, 0.98 for a 2-4 prediction
    m = evaluation_metrics(y, probs, threshold=0.5)
    assert m["sensitivity_grade_0"] == 0.5 and m["sensitivity_grade_1"] == 1.0
    assert m["sensitivity_grade_2"] == 0.5 and m["sensitivity_grade_3"] == 0.0
    assert np.isnan(m["sensitivity_grade_4"])  # no grade-4 image: undefined, not 0
    # referable positives (grades 2, 2, 3) score 0.98, 0.03, 0.98; negatives 0.03, 0.03, 0.03:
    # of 9 pairs, 6 wins and 3 ties (0.03 vs 0.03) -> (6 + 3/2) / 9
    assert m["referable_auroc"] == pytest.approx(7.5 / 9)
    # at 0.5: referred 2 of 3 positives and none of 3 negatives; 2 of 2 referred are positive,
    # 3 of 4 not referred are negative
    assert m["referable_sensitivity"] == pytest.approx(2 / 3)
    assert m["referable_specificity"] == 1.0
    assert m["referable_ppv"] == 1.0 and m["referable_npv"] == pytest.approx(3 / 4)
    # at 0.99 nobody is referred: PPV is undefined, not 0
    high = evaluation_metrics(y, probs, threshold=0.99)
    assert high["referable_sensitivity"] == 0.0 and np.isnan(high["referable_ppv"])
    assert "referable_sensitivity" not in evaluation_metrics(y, probs)  # no threshold, no figure


def brute_force_metrics(y, probs, present, threshold):
    """The same metrics the slow way: sklearn and plain Python, one resample at a time.

    `present`: the grades of the full data; a macro average is undefined without one of them."""
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns where kappa is undefined
        m = classification_metrics(y, probs)
    if not set(present) <= set(y):
        m["auroc"] = m["f1"] = m["retfound"] = np.nan
    referable, referred = y >= 2, probs[:, 2:].sum(axis=1) >= threshold
    m["referable_auroc"] = (
        roc_auc_score(referable, probs[:, 2:].sum(axis=1))
        if 0 < referable.sum() < len(y)
        else np.nan
    )
    for name, hits, of in [
        ("sensitivity", referable & referred, referable),
        ("specificity", ~referable & ~referred, ~referable),
        ("ppv", referable & referred, referred),
        ("npv", ~referable & ~referred, ~referred),
    ]:
        m[f"referable_{name}"] = hits.sum() / of.sum() if of.any() else np.nan
    for c in range(5):
        m[f"sensitivity_grade_{c}"] = (pred[y == c] == c).mean() if (y == c).any() else np.nan
    confidence, ece = probs.max(axis=1), 0.0
    for lo, hi in zip(np.arange(15) / 15, np.arange(1, 16) / 15, strict=True):
        members = [j for j in range(len(y)) if lo < confidence[j] <= hi]
        if members:
            gap = np.mean(pred[members] == y[members]) - np.mean(confidence[members])
            ece += len(members) / len(y) * abs(gap)
    m["ece"] = ece
    return m


def bootstrap_intervals(y, probs, n_resamples, seed, units=None, threshold=None):
    """metrics.bootstrap.bootstrap_intervals, flat: <metric>_ci_low, _ci_high, _ci_undefined."""
    units = np.arange(len(y)) if units is None else units
    result = bootstrap.bootstrap_intervals(y, probs, units, n_resamples, seed, threshold=threshold)
    return {
        f"{name}_ci_{key}": value
        for name, r in result.items()
        for key, value in r.items()
        if key != "mean"
    }


def check_against_brute_force(fast, resampled, y, probs, threshold):
    """Each metric's interval and undefined count from `resampled` (lists of image indices)."""
    present = np.unique(y)
    per_resample = [
        brute_force_metrics(y[idx], probs[idx], present, threshold) for idx in resampled
    ]
    for name in evaluation_metrics(y, probs, threshold):
        values = np.array([m[name] for m in per_resample], dtype=float)
        defined = values[np.isfinite(values)]
        low, high = np.percentile(defined, [2.5, 97.5]) if defined.size else (np.nan, np.nan)
        assert fast[f"{name}_ci_undefined"] == len(values) - len(defined), name
        assert fast[f"{name}_ci_low"] == pytest.approx(low, abs=1e-9, nan_ok=True), name
        assert fast[f"{name}_ci_high"] == pytest.approx(high, abs=1e-9, nan_ok=True), name


def test_bootstrap_intervals_match_a_brute_force_loop():
    y, probs = random_case(15, seed=3)
    n_resamples, seed, threshold = 100, 7, 0.4
    fast = bootstrap_intervals(y, probs, n_resamples, seed, threshold=threshold)
    rows = np.concatenate(list(bootstrap_indices(len(y), n_resamples, seed)))
    assert rows.shape == (n_resamples, len(y))
    check_against_brute_force(fast, rows, y, probs, threshold)
    # 15 images: some resamples miss a grade; macro AUROC and F1 count them as undefined
    missing_a_grade = sum(len(np.unique(y[idx])) < len(np.unique(y)) for idx in rows)
    assert missing_a_grade > 0
    assert fast["auroc_ci_undefined"] == fast["f1_ci_undefined"] == missing_a_grade
    assert fast["accuracy_ci_undefined"] == 0


def identical_fellow_eyes(n_patients: int, seed: int):
    """Both eyes of each patient: the same grade, the same prediction; patients p0, p0, p1, p1..."""
    y, probs = random_case(n_patients, seed)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    return np.repeat(y, 2), np.repeat(probs, 2, axis=0), patients


def test_patient_intervals_resample_patients():
    y, probs, patients = identical_fellow_eyes(12, seed=5)
    n_resamples, seed, threshold = 100, 1, 0.4
    fast = bootstrap_intervals(y, probs, n_resamples, seed, patients, threshold=threshold)
    # brute force: draw patients with the same seeded generator, then take all their images
    drawn = np.concatenate(list(bootstrap_indices(12, n_resamples, seed)))
    images_of = {p: np.flatnonzero(patients == f"p{p}") for p in range(12)}
    resampled = [np.concatenate([images_of[p] for p in row]) for row in drawn]
    check_against_brute_force(fast, resampled, y, probs, threshold)


def test_patient_intervals_are_wider_than_image_intervals_on_fellow_eyes():
    # Fellow eyes carry no more information than one eye: resampling images pretends twice as
    # many independent cases and gives intervals about 1/sqrt(2) as wide.
    y, probs, patients = identical_fellow_eyes(150, seed=6)
    by_patient = bootstrap_intervals(y, probs, 1000, 0, patients, threshold=0.4)
    by_image = bootstrap_intervals(y, probs, 1000, 0, threshold=0.4)
    for name in ("accuracy", "kappa", "auroc", "referable_sensitivity", "referable_specificity"):
        widths = [ci[f"{name}_ci_high"] - ci[f"{name}_ci_low"] for ci in (by_patient, by_image)]
        assert 1.15 < widths[0] / widths[1] < 1.8, (name, widths)


def test_unit_labels_are_numbered_in_order_of_appearance():
    y, probs = random_case(20, seed=8)
    names = np.array([f"u{i}" for i in range(20)])  # any labels: the same draws as 0..19
    assert bootstrap_intervals(y, probs, 100, 3, names) == bootstrap_intervals(y, probs, 100, 3)


def test_bootstrap_interval_by_hand():
    # Two images, one right and one wrong: a resample scores 0 % (both draws the wrong one,
    # p = 1/4), 50 % (p = 1/2) or 100 % (p = 1/4); the 2.5th and 97.5th percentiles of 4000
    # such resamples are 0 and 100.
    y, probs = np.array([0, 1]), one_hot(np.array([0, 0]))
    ci = bootstrap_intervals(y, probs, n_resamples=4000, seed=0)
    assert (ci["accuracy_ci_low"], ci["accuracy_ci_high"]) == (0, 100)
    assert ci["accuracy_ci_undefined"] == 0
    # Grade-1 sensitivity is 0 whenever defined: defined where image 1 was drawn at all
    drew_grade_1 = sum(int((idx == 1).any(axis=1).sum()) for idx in bootstrap_indices(2, 4000, 0))
    assert ci["sensitivity_grade_1_ci_undefined"] == 4000 - drew_grade_1
    assert 2800 < drew_grade_1 < 3200  # 3/4 of 4000
    assert ci["sensitivity_grade_1_ci_low"] == ci["sensitivity_grade_1_ci_high"] == 0.0
    # Macro AUROC needs both grades: undefined in the 1/2 of resamples that draw one image twice
    drew_both = sum(
        int((idx.min(axis=1) != idx.max(axis=1)).sum()) for idx in bootstrap_indices(2, 4000, 0)
    )
    assert ci["auroc_ci_undefined"] == 4000 - drew_both
    assert ci["sensitivity_grade_4_ci_undefined"] == 4000
    assert np.isnan(ci["sensitivity_grade_4_ci_low"])


def test_bootstrap_is_seeded():
    y, probs = random_case(40, seed=4)
    a = bootstrap_intervals(y, probs, 200, seed=1)
    assert a == bootstrap_intervals(y, probs, 200, seed=1)
    assert a != bootstrap_intervals(y, probs, 200, seed=2)

import numpy as np
import pytest

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.metrics.classification import evaluation_metrics
from retfound_hpo.metrics.operating_point import referable_score
from retfound_hpo.metrics.threshold import choose_threshold

# Four referable val images (grades 2-4) and four non-referable ones (grades 0-1), with their
# P(grade >= 2):   positives 0.9 0.8 0.6 0.3   negatives 0.7 0.2 0.1 0.05
GRADES = np.array([2, 3, 4, 2, 0, 1, 0, 0])
SCORES = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])


def probs_with_score(scores: np.ndarray) -> np.ndarray:
    """Probabilities whose grade 2-4 mass is `scores` (split over grades 2 and 3)."""
    probs = np.zeros((len(scores), 5))
    probs[:, 0], probs[:, 2], probs[:, 3] = 1 - scores, scores / 2, scores / 2
    return probs


def test_referable_score_sums_grades_2_to_4():
    probs = np.array([[0.1, 0.2, 0.3, 0.25, 0.15]])
    assert referable_score(probs) == pytest.approx([0.7])


@pytest.mark.parametrize(
    "target, threshold",
    [(0.5, 0.8), (0.75, 0.6), (0.9, 0.3), (1.0, 0.3), (0.25, 0.9)],
)
def test_sensitivity_rule_takes_the_highest_threshold_reaching_the_target(target, threshold):
    probs = probs_with_score(SCORES)
    chosen = choose_threshold(GRADES, probs, "sensitivity", target).threshold
    assert chosen == pytest.approx(threshold)
    # applied to the same val images it gives what the rule promised, and one step up does not
    m = evaluation_metrics(GRADES, probs, chosen)
    assert m["referable_sensitivity"] >= target
    above = SCORES[(SCORES > chosen + 1e-9)]
    if above.size:
        stricter = evaluation_metrics(GRADES, probs, above.min())
        assert stricter["referable_sensitivity"] < target


def test_youden_rule_by_hand():
    # thresholds 0.9, 0.8, 0.7, 0.6, 0.3, 0.2: sensitivity + specificity - 1 =
    # .25, .5, .25, .5, .75, .5 -> 0.3
    chosen = choose_threshold(GRADES, probs_with_score(SCORES), "youden", 0.9)
    assert chosen.threshold == pytest.approx(0.3) and chosen.target is None
    # a tie: positives 0.9, 0.8, negatives 0.85, 0.1 give 0.5 at both 0.9 and 0.8: the highest
    tied = probs_with_score(np.array([0.9, 0.8, 0.85, 0.1]))
    assert choose_threshold(np.array([2, 2, 0, 0]), tied, "youden", 0.9).threshold == 0.9


def test_val_without_both_classes_is_a_clear_error():  # every rule
    probs = probs_with_score(SCORES[4:])
    with pytest.raises(DatasetError, match=r"val split has no referable \(grade >= 2\) image"):
        choose_threshold(GRADES[4:], probs, "sensitivity", 0.9)
    with pytest.raises(DatasetError, match=r"no non-referable \(grade < 2\) image"):
        choose_threshold(GRADES[:4], probs_with_score(SCORES[:4]), "youden", 0.9)


def val_split(seed: int, n: int = 225, prevalence: float = 0.3):
    """Val grades (referable with the prevalence) and probabilities whose P(referable) is
    Beta(2.5, 1) for referable images and Beta(1, 2.5) for the others (AUROC ~0.91)."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prevalence
    score = np.where(y, rng.beta(2.5, 1.0, n), rng.beta(1.0, 2.5, n))
    return np.where(y, 2, 0), probs_with_score(score), score


def test_lower_bound_rule_is_never_above_the_point_rule():
    for seed in range(60):
        grades, probs, score = val_split(seed)
        point = choose_threshold(grades, probs, "sensitivity", 0.9)
        for method in ("wilson", "clopper-pearson"):
            lcb = choose_threshold(grades, probs, "sensitivity_lcb", 0.9, method=method)
            assert lcb.threshold <= point.threshold and lcb.threshold in score
            if lcb.reached:
                assert lcb.sensitivity_bound >= 0.9
                assert lcb.sensitivity_low <= lcb.sensitivity_bound <= lcb.sensitivity
                assert lcb.sensitivity <= lcb.sensitivity_high
                m = evaluation_metrics(grades, probs, lcb.threshold)
                assert m["referable_sensitivity"] == lcb.sensitivity  # it reproduces on val


def test_lower_bound_rule_with_too_few_referable_images_refers_everyone():
    grades, probs, score = val_split(7, n=60, prevalence=0.15)  # ~9 referable images
    res = choose_threshold(grades, probs, "sensitivity_lcb", 0.9, method="clopper-pearson")
    assert not res.reached and res.threshold == score.min() and res.sensitivity == 1.0
    assert res.sensitivity_bound < 0.9
    # Clopper-Pearson one-sided 95 %: 28 of 28 bounds at 0.05**(1/28) = 0.8986, 29 of 29 reach it
    for n_pos, reached in ((28, False), (29, True)):
        grades = np.r_[np.full(n_pos, 2), np.zeros(50, int)]
        scores = np.r_[np.linspace(0.6, 1, n_pos), np.linspace(0, 0.5, 50)]
        probs = probs_with_score(scores)
        res = choose_threshold(grades, probs, "sensitivity_lcb", 0.9, method="clopper-pearson")
        assert res.reached == reached


def test_lower_bound_rule_is_clustered_by_units():
    grades, probs, _ = val_split(11, n=240)
    plain = choose_threshold(grades, probs, "sensitivity_lcb", 0.9)
    assert plain == choose_threshold(grades, probs, "sensitivity_lcb", 0.9, units=np.arange(240))
    # two eyes per patient with the same score: half as much evidence, a lower threshold
    paired_probs = probs_with_score(np.repeat(referable_score(probs)[:120], 2))
    paired_grades = np.repeat(grades[:120], 2)
    eyes = choose_threshold(paired_grades, paired_probs, "sensitivity_lcb", 0.9)
    patients = choose_threshold(
        paired_grades, paired_probs, "sensitivity_lcb", 0.9, units=np.arange(240) // 2
    )
    assert patients.threshold < eyes.threshold
    assert patients.sensitivity_high - patients.sensitivity_low > (
        eyes.sensitivity_high - eyes.sensitivity_low
    )

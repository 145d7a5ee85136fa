import numpy as np
import pytest

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.metrics.classification import evaluation_metrics
from retfound_hpo.metrics.operating_point import choose_threshold, referable_score

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
    chosen = choose_threshold(GRADES, probs, "sensitivity", target)
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
    assert choose_threshold(GRADES, probs_with_score(SCORES), "youden", 0.9) == pytest.approx(0.3)
    # a tie: positives 0.9, 0.8, negatives 0.85, 0.1 give 0.5 at both 0.9 and 0.8: the highest
    tied = probs_with_score(np.array([0.9, 0.8, 0.85, 0.1]))
    assert choose_threshold(np.array([2, 2, 0, 0]), tied, "youden", 0.9) == pytest.approx(0.9)


def test_val_without_both_classes_is_a_clear_error():
    probs = probs_with_score(SCORES[4:])
    with pytest.raises(DatasetError, match=r"val split has no referable \(grade >= 2\) image"):
        choose_threshold(GRADES[4:], probs, "sensitivity", 0.9)
    with pytest.raises(DatasetError, match=r"no non-referable \(grade < 2\) image"):
        choose_threshold(GRADES[:4], probs_with_score(SCORES[:4]), "youden", 0.9)

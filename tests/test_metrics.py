import numpy as np
import pytest

from retfound_hpo.metrics import classification_metrics


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

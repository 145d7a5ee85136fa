import io

import numpy as np
import pytest
from PIL import Image

from retfound_hpo.evaluation.figures import reliability_png
from retfound_hpo.metrics.calibration import (
    confidence_bins,
    expected_calibration_error,
    weighted_ece,
)


def probs_with_top(top: list[float], pred: list[int]) -> np.ndarray:
    """Probabilities whose argmax is `pred` with confidence `top`, the rest spread evenly."""
    probs = np.repeat(((1 - np.array(top)) / 4)[:, None], 5, axis=1)
    probs[np.arange(len(top)), pred] = top
    return probs


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.5 (right), 0.3 (wrong): bins (13/15, 14/15],
    # (7/15, 8/15], (4/15, 5/15] hold 2, 1, 1 images with accuracy 1/2, 1, 0
    probs = probs_with_top([0.9, 0.9, 0.5, 0.3], [2, 2, 0, 4])
    y = np.array([2, 1, 0, 3])
    assert confidence_bins(probs).tolist() == [13, 13, 7, 4]
    by_hand = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.5) + 1 / 4 * abs(0 - 0.3)
    assert expected_calibration_error(y, probs) == pytest.approx(by_hand)  # 0.4


def test_ece_uses_15_bins_not_10():
    """Confidences off the 0.1 grid: 0.62 (right) and 0.68 (wrong) share a bin of ten,
    (0.6, 0.7], with a gap of |0.5 - 0.65| = 0.15; fifteen bins split them at 2/3."""
    probs = probs_with_top([0.62, 0.68], [1, 1])
    y = np.array([1, 0])
    assert confidence_bins(probs).tolist() == [9, 10]
    by_hand = 1 / 2 * abs(1 - 0.62) + 1 / 2 * abs(0 - 0.68)  # 0.53
    assert expected_calibration_error(y, probs) == pytest.approx(by_hand)
    assert weighted_ece(y, probs, np.ones((1, 2)))[0] == pytest.approx(by_hand)


def test_ece_of_a_calibrated_and_an_overconfident_model():
    # 10 images at confidence 0.7, 7 of them right: calibrated; all 10 at 0.95: gap 0.25
    y = np.array([0] * 7 + [1] * 3)
    assert expected_calibration_error(y, probs_with_top([0.7] * 10, [0] * 10)) == pytest.approx(0)
    assert expected_calibration_error(y, probs_with_top([0.95] * 10, [0] * 10)) == pytest.approx(
        0.25
    )


def test_weighted_ece_counts_images_by_weight():
    probs = probs_with_top([0.9, 0.9, 0.5, 0.3], [2, 2, 0, 4])
    y = np.array([2, 1, 0, 3])
    weights = np.array([[1.0, 1, 1, 1], [2, 0, 1, 1]])  # resample 2: image 0 twice, image 1 never
    repeated = [0, 0, 2, 3]
    expected = [
        expected_calibration_error(y, probs),
        expected_calibration_error(y[repeated], probs[repeated]),
    ]
    np.testing.assert_allclose(weighted_ece(y, probs, weights), expected)


def test_full_confidence_falls_in_the_last_bin():
    assert confidence_bins(probs_with_top([1.0, 0.2], [0, 0])).tolist() == [14, 2]


def test_reliability_png():
    probs = probs_with_top([0.9, 0.9, 0.5, 0.3], [2, 2, 0, 4])
    png = reliability_png(np.array([2, 1, 0, 3]), probs, "test: ECE 0.400")
    Image.open(io.BytesIO(png)).verify()
    both = reliability_png(np.array([2, 1, 0, 3]), probs, "grades", "P(referable)")
    assert Image.open(io.BytesIO(both)).size[0] > 1.5 * Image.open(io.BytesIO(png)).size[0]

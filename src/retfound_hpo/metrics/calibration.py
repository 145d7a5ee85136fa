"""Calibration: expected calibration error (ECE); the reliability diagram is evaluation.figures.

ECE is the standard top-label definition (Guo et al. 2017, "On calibration of modern neural
networks"): each image's confidence is its highest predicted probability; images fall into 15
equal-width bins (i/15, (i+1)/15]; ECE = sum over bins of (images in bin / all images) x
|accuracy in bin - mean confidence in bin|. 0 is perfectly calibrated; an over-confident model
has bins whose confidence exceeds their accuracy.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def confidence_bins(probs: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index (N,) of each image's top-class confidence; bin i holds (i/n, (i+1)/n]."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, probs.max(axis=1), side="left") - 1, 0, n_bins - 1)


def weighted_ece(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ECE for B weightings (B, N) of the same images -> (B,)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(float)
    in_bin = np.eye(ECE_BINS)[confidence_bins(probs)]  # (N, bins) one-hot
    hits = weights @ (in_bin * correct[:, None])  # (B, bins): weighted correct images
    confident = weights @ (in_bin * confidence[:, None])  # (B, bins): weighted confidence
    return np.abs(hits - confident).sum(axis=1) / weights.sum(axis=1)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray) -> float:
    return float(weighted_ece(y_true, probs, np.ones((1, len(probs))))[0])

"""Calibration: expected calibration error (ECE) and the reliability diagram.

ECE is the standard top-label definition (Guo et al. 2017, "On calibration of modern neural
networks"): each image's confidence is its highest predicted probability; images fall into 15
equal-width bins (i/15, (i+1)/15]; ECE = sum over bins of (images in bin / all images) x
|accuracy in bin - mean confidence in bin|. 0 is perfectly calibrated; an over-confident model
has bins whose confidence exceeds their accuracy.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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


def reliability_png(y_true: np.ndarray, probs: np.ndarray, title: str) -> bytes:
    """Reliability diagram: accuracy per confidence bin against the diagonal, images per bin."""
    bins = confidence_bins(probs)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    count = np.bincount(bins, minlength=ECE_BINS)
    with np.errstate(invalid="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=ECE_BINS) / count
        confidence = np.bincount(bins, weights=probs.max(axis=1), minlength=ECE_BINS) / count
    width = 1.0 / ECE_BINS
    left = np.arange(ECE_BINS) * width
    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(left, np.nan_to_num(accuracy), width, align="edge", edgecolor="black", label="accuracy")
    # the distance from a bar's top down (or up) to its marker is that bin's calibration gap
    ax.plot(left + width / 2, confidence, "rx", label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(title=title, ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(left, count, width, align="edge", color="grey")
    ax_count.set(xlabel="confidence (top-class probability)", ylabel="images")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()

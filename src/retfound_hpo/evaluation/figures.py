"""Evaluation figures as PNG bytes: the confusion matrix and the reliability diagram."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

from retfound_hpo.metrics.calibration import ECE_BINS, confidence_bins


def confusion_png(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, title: str) -> bytes:
    cm = confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay(cm, display_labels=list(range(num_classes))).plot(
        ax=ax, cmap="Blues", colorbar=False
    )
    ax.set(title=title, xlabel="predicted grade", ylabel="true grade")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


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

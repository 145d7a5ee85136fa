"""Evaluation figures as PNG bytes: the confusion matrix and the reliability diagrams (of the
top-class confidence over the grades and, beside it, of P(referable))."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

from retfound_hpo.metrics.calibration import ECE_BINS, confidence_bins
from retfound_hpo.metrics.operating_point import REFERABLE_GRADE, referable_score
from retfound_hpo.metrics.recalibration import score_bins


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


CONFIDENCE = ("accuracy", "confidence (top-class probability)")
REFERABLE = ("referable share", "P(grade >= 2)")


def reliability_png(
    y_true: np.ndarray, probs: np.ndarray, title: str, referable_title: str | None = None
) -> bytes:
    """Reliability diagrams: accuracy per bin of top-class confidence against the diagonal,
    images per bin; with `referable_title`, beside it the referable share per bin of
    P(grade >= 2), the score the threshold and any PPV rest on."""
    y_true = np.asarray(y_true)
    panels = [(confidence_bins(probs), probs.argmax(axis=1) == y_true, probs.max(axis=1),
               title, CONFIDENCE)]  # fmt: skip
    if referable_title is not None:
        score = referable_score(probs)
        panels.append((score_bins(score), y_true >= REFERABLE_GRADE, score, referable_title,
                       REFERABLE))  # fmt: skip
    fig, axes = plt.subplots(
        2, len(panels), figsize=(5 * len(panels), 5.5), sharex=True,
        gridspec_kw={"height_ratios": [3, 1]}, squeeze=False,
    )  # fmt: skip
    for column, panel in enumerate(panels):
        _reliability(axes[0, column], axes[1, column], *panel)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _reliability(ax, ax_count, bins, hit, predicted, title: str, labels: tuple[str, str]):
    count = np.bincount(bins, minlength=ECE_BINS)
    with np.errstate(invalid="ignore"):
        accuracy = np.bincount(bins, weights=hit.astype(float), minlength=ECE_BINS) / count
        confidence = np.bincount(bins, weights=predicted, minlength=ECE_BINS) / count
    width = 1.0 / ECE_BINS
    left = np.arange(ECE_BINS) * width
    ax.bar(left, np.nan_to_num(accuracy), width, align="edge", edgecolor="black", label=labels[0])
    # the distance from a bar's top down (or up) to its marker is that bin's calibration gap
    ax.plot(left + width / 2, confidence, "rx", label="mean predicted")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(title=title, ylabel=labels[0], xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(left, count, width, align="edge", color="grey")
    ax_count.set(xlabel=labels[1], ylabel="images")

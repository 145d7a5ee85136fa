"""Evaluate a trained model on prepared datasets: metrics, predictions and confusion matrices."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402
from torch import nn  # noqa: E402

from retfound_hpo.data.preprocess import load_prepared  # noqa: E402
from retfound_hpo.io import write_bytes_atomic, write_text_atomic  # noqa: E402
from retfound_hpo.metrics import classification_metrics  # noqa: E402
from retfound_hpo.train import predict_proba, resolve_device  # noqa: E402

log = logging.getLogger(__name__)


def predictions_table(index: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """One row per image: id, true grade, predicted grade, one probability column per grade."""
    table = pd.DataFrame(
        {"id": index["id"], "true_grade": index["grade"], "pred_grade": probs.argmax(axis=1)}
    )
    for c in range(probs.shape[1]):
        table[f"prob_{c}"] = probs[:, c].round(6)
    return table


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


def evaluate_datasets(
    model: nn.Module,
    datasets: dict[str, Path],
    out_dir: str | Path,
    device: str = "auto",
    amp: str = "auto",
    batch_size: int = 128,
) -> dict[str, dict[str, float]]:
    """Metrics per dataset; writes <out_dir>/<name>/{predictions.csv, confusion_matrix.png}."""
    out_dir = Path(out_dir)
    model.to(resolve_device(device))
    results = {}
    for name, folder in datasets.items():
        images, index = load_prepared(folder)
        probs = predict_proba(model, images, batch_size, amp=amp, desc=f"evaluate {name}")
        y_true = index["grade"].to_numpy()
        metrics = {"n_images": len(index), **classification_metrics(y_true, probs)}
        results[name] = metrics
        table = predictions_table(index, probs)
        write_text_atomic(out_dir / name / "predictions.csv", table.to_csv(index=False))
        title = f"{name}: accuracy {metrics['accuracy']:.1f}%, kappa {metrics['kappa']:.3f}"
        write_bytes_atomic(
            out_dir / name / "confusion_matrix.png",
            confusion_png(y_true, table["pred_grade"].to_numpy(), probs.shape[1], title),
        )
        log.info(
            "%s: %d images, accuracy %.2f%%, kappa %.3f, auroc %.3f, f1 %.3f",
            name,
            len(index),
            metrics["accuracy"],
            metrics["kappa"],
            metrics["auroc"],
            metrics["f1"],
        )
    return results

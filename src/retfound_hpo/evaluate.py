"""Evaluate a trained model on prepared datasets: metrics with bootstrap intervals, predictions
and confusion matrices (a PNG, and a CSV of actual/predicted pairs for DVC's confusion plot)."""

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
from retfound_hpo.errors import DatasetError  # noqa: E402
from retfound_hpo.io import write_bytes_atomic, write_text_atomic  # noqa: E402
from retfound_hpo.metrics import bootstrap_intervals, evaluation_metrics  # noqa: E402
from retfound_hpo.train import predict_proba, resolve_device  # noqa: E402

log = logging.getLogger(__name__)

DATASETS_DIR = "datasets"  # <out_dir>/datasets/<name>/{predictions.csv, confusion_matrix.png}
CONFUSION_DIR = "confusion"  # <out_dir>/confusion/<name>.csv: DVC's `confusion` plot template


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
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Metrics per prepared dataset, each with a seeded 95% bootstrap interval (none if
    bootstrap_samples is 0). Writes <out_dir>/datasets/<name>/{predictions.csv,
    confusion_matrix.png} and <out_dir>/confusion/<name>.csv (columns actual, predicted).

    Every dataset is opened and checked first (cheap: headers and indexes), so that a missing or
    empty one stops the run before any file of the others is written."""
    out_dir = Path(out_dir)
    prepared = {name: load_prepared(folder) for name, folder in datasets.items()}
    for name, (_, index) in prepared.items():
        if index.empty:
            raise DatasetError(
                f"{datasets[name]}: dataset {name!r} has no images to evaluate (empty index.csv); "
                "check its labels file and rerun prepare-split"
            )
    model.to(resolve_device(device))
    results = {}
    for name, (images, index) in prepared.items():
        probs = predict_proba(model, images, batch_size, amp=amp, desc=f"evaluate {name}")
        y_true = index["grade"].to_numpy()
        results[name] = metrics = dataset_metrics(y_true, probs, bootstrap_samples, seed)
        table = predictions_table(index, probs)
        write_text_atomic(
            out_dir / DATASETS_DIR / name / "predictions.csv", table.to_csv(index=False)
        )
        confusion = table[["true_grade", "pred_grade"]].set_axis(["actual", "predicted"], axis=1)
        write_text_atomic(out_dir / CONFUSION_DIR / f"{name}.csv", confusion.to_csv(index=False))
        title = f"{name}: accuracy {metrics['accuracy']:.1f}%, kappa {metrics['kappa']:.3f}"
        write_bytes_atomic(
            out_dir / DATASETS_DIR / name / "confusion_matrix.png",
            confusion_png(y_true, table["pred_grade"].to_numpy(), probs.shape[1], title),
        )
        log.info("%s: %d images, %s", name, len(index), _summary(metrics))
    return results


def dataset_metrics(
    y_true: np.ndarray, probs: np.ndarray, bootstrap_samples: int, seed: int
) -> dict[str, float]:
    """n_images, then each metric followed by its interval keys (flat, for `dvc metrics diff`)."""
    point = evaluation_metrics(y_true, probs)
    intervals = (
        bootstrap_intervals(y_true, probs, bootstrap_samples, seed) if bootstrap_samples else {}
    )
    metrics: dict[str, float] = {"n_images": len(y_true)}
    for name, value in point.items():
        metrics[name] = value
        metrics |= {k: intervals[k] for k in _ci_keys(name) if k in intervals}
    return metrics


def _ci_keys(name: str) -> tuple[str, str, str]:
    return f"{name}_ci_low", f"{name}_ci_high", f"{name}_ci_n"


def _summary(metrics: dict[str, float]) -> str:
    parts = []
    for name in ("accuracy", "kappa", "auroc", "referable_sensitivity", "referable_specificity"):
        low, high, _ = _ci_keys(name)
        ci = f" [{metrics[low]:.3g}, {metrics[high]:.3g}]" if low in metrics else ""
        parts.append(f"{name} {metrics[name]:.3g}{ci}")
    return ", ".join(parts)

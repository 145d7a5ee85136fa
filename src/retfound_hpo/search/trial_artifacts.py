"""What each finished trial leaves behind: its learning curve, its confusion matrix and, if asked,
its LoRA adapter, as Optuna artifacts that optuna-dashboard shows beside the trial.

The store is a folder beside the study (`<study dir>/artifacts`); open the dashboard with
`optuna-dashboard sqlite:///<study dir>/study.db --artifact-dir <study dir>/artifacts`. Keeping
artifacts is never fatal: a failure is a warning and the search goes on.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.artifacts import FileSystemArtifactStore, upload_artifact  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402
from torch import nn  # noqa: E402

from retfound_hpo.training.loop import FitResult

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
CURVES = ("val_accuracy", "val_kappa", "val_auroc", "val_f1")


def artifact_store(study_dir: Path) -> FileSystemArtifactStore:
    folder = study_dir / ARTIFACTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(base_path=str(folder))


def _curve_png(history: pd.DataFrame, path: Path, title: str) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(history["epoch"], history["train_loss"], marker="o", label="train")
    left.plot(history["epoch"], history["val_loss"], marker="o", label="val (per grade)")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    left.legend()
    for name in CURVES:
        scale = 0.01 if name == "val_accuracy" else 1.0  # accuracy is in percent
        right.plot(history["epoch"], history[name] * scale, marker="o", label=name[4:])
    right.set(xlabel="epoch", ylim=(-0.05, 1.05), title="validation")
    right.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _confusion_png(grades: np.ndarray, probs: np.ndarray, path: Path, title: str) -> None:
    labels = list(range(probs.shape[1]))
    cm = confusion_matrix(grades, probs.argmax(axis=1), labels=labels)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(cm, display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set(title=title, xlabel="predicted grade", ylabel="true grade")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def keep_trial_artifacts(
    trial: optuna.Trial,
    study_dir: Path,
    progress: FitResult,
    val_grades: np.ndarray,
    model: nn.Module | None = None,
) -> None:
    """Upload the trial's learning curve (CSV, PNG), its best epoch's validation confusion
    matrix (PNG) and, with `model`, its LoRA adapter (a zip of save_pretrained)."""
    if not progress.history:
        return
    try:
        store = artifact_store(study_dir)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            history = pd.DataFrame(progress.history)
            files = [tmp / "learning_curve.csv", tmp / "learning_curve.png"]
            history.to_csv(files[0], index=False)
            _curve_png(history, files[1], f"trial {trial.number}")
            if progress.best_val_probs is not None:
                files.append(tmp / "confusion_matrix.png")
                title = f"trial {trial.number}, val, epoch {progress.best_epoch}"
                _confusion_png(val_grades, progress.best_val_probs, files[-1], title)
            if model is not None:
                model.save_pretrained(tmp / "adapter")
                files.append(
                    Path(shutil.make_archive(str(tmp / "adapter"), "zip", tmp / "adapter"))
                )
            for path in files:
                upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    except Exception as err:  # artifacts help; they must never cost a trial
        log.warning("trial %d: artifacts not kept (%s)", trial.number, err)

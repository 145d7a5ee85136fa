"""Evaluate a trained model on prepared datasets: metrics with bootstrap intervals, the
referable-DR operating point fixed on val, calibration, predictions, confusion matrices and
reliability diagrams; given several seeds' models, every seed's figures with their mean.

metrics.json, keyed by dataset (`val`, `test`, then every evaluate.datasets entry), flat enough
for `dvc metrics diff` (`test.kappa`, `domain_b.referable_sensitivity_ci_low`, ...):

    <dataset>.n_images
    <dataset>.ci_unit, ci_units, ci_resamples   what the bootstrap resampled: patient or image
    <dataset>.referable_rule, referable_target, referable_threshold
                         the operating point, chosen on val: the same threshold in every dataset
    <dataset>.<metric>, <metric>_ci_low, <metric>_ci_high, <metric>_ci_undefined
    <dataset>.seeds.n, seeds.<seed>.<metric>    with two or more seeds: each seed's model (its
                                                own threshold, chosen on val by the same rule)
    <dataset>.seeds.{mean,sd,ci95_low,ci95_high}.<metric>
                         over the seeds, RETFound's interval mean +- 1.96 SD / sqrt(n)

Metrics are described in metrics.py. Per dataset, <out_dir>/datasets/<name>/ holds
predictions.csv (one row per image: id, patient, grades, probabilities, P(referable) and the
decision at the threshold), confusion_matrix.png, reliability.png and, with several seeds,
seeds/<seed>.csv (each seed's predictions); <out_dir>/confusion/<name>.csv feeds DVC's plot.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.core.files import write_bytes_atomic, write_text_atomic
from retfound_hpo.data.prepared import PreparedImages, load_prepared
from retfound_hpo.evaluation.figures import confusion_png, reliability_png
from retfound_hpo.evaluation.seed_summary import summarize_seeds
from retfound_hpo.metrics.bootstrap import bootstrap_intervals
from retfound_hpo.metrics.calibration import ECE_BINS
from retfound_hpo.metrics.classification import evaluation_metrics
from retfound_hpo.metrics.operating_point import (
    REFERABLE_GRADE,
    Rule,
    choose_threshold,
    referable_score,
)
from retfound_hpo.model.saved import load_trained_model
from retfound_hpo.training.device import resolve_device
from retfound_hpo.training.inference import predict_proba

log = logging.getLogger(__name__)

VAL = "val"  # the dataset the operating point is chosen on
DATASETS_DIR = "datasets"  # <out_dir>/datasets/<name>/{predictions.csv, *.png}
CONFUSION_DIR = "confusion"  # <out_dir>/confusion/<name>.csv: DVC's `confusion` plot template


def predictions_table(
    index: pd.DataFrame, probs: np.ndarray, threshold: float | None = None
) -> pd.DataFrame:
    """One row per image: id, patient, true and predicted grade, one probability column per
    grade, p_referable (P(grade >= 2), unrounded so that the threshold applies exactly) and,
    with a threshold, `referable` (1 where p_referable >= threshold)."""
    table = pd.DataFrame(
        {"id": index["id"], "true_grade": index["grade"], "pred_grade": probs.argmax(axis=1)}
    )
    for c in range(probs.shape[1]):
        table[f"prob_{c}"] = probs[:, c].round(6)
    table["patient"] = index["patient"]
    if probs.shape[1] > REFERABLE_GRADE:
        table["p_referable"] = referable_score(probs)
        if threshold is not None:
            table["referable"] = (table["p_referable"] >= threshold).astype(int)
    return table


def evaluate_datasets(
    model: nn.Module,
    datasets: dict[str, Path],
    out_dir: str | Path,
    device: str = "auto",
    amp: str = "auto",
    batch_size: int = 128,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    referable_rule: Rule = "sensitivity",
    referable_target: float = 0.9,
    seed_models: dict[str, Path] | None = None,
) -> dict[str, dict]:
    """Metrics per prepared dataset (see the module docstring), each with a seeded 95% bootstrap
    interval (none if bootstrap_samples is 0); writes the files the module docstring lists.

    The operating point is chosen on datasets["val"] alone; without a `val` entry there is none.
    `seed_models` ({seed: model folder}) with two or more entries adds each seed's figures.
    Every dataset is opened and checked first (cheap: headers and indexes), so that a missing or
    empty one stops the run before any file of the others is written."""
    out_dir = Path(out_dir)
    prepared = _open_all(datasets)
    probs = _predict_all(model, prepared, device, amp, batch_size)
    threshold = _operating_point(prepared, probs, referable_rule, referable_target)
    rule: dict[str, object] = {"referable_rule": referable_rule}
    if referable_rule == "sensitivity":  # youden has no target
        rule["referable_target"] = referable_target
    rule["referable_threshold"] = threshold
    results = {}
    for name, (_, index) in prepared.items():
        y_true, p = index["grade"].to_numpy(), probs[name]
        intervals = (
            bootstrap_intervals(
                y_true, p, bootstrap_samples, seed, patients=index["patient"], threshold=threshold
            )
            if bootstrap_samples
            else {}
        )
        point = evaluation_metrics(y_true, p, threshold)
        results[name] = metrics = {
            "n_images": len(index),
            **{k: v for k, v in intervals.items() if k.startswith("ci_")},
            **(rule if threshold is not None else {}),
        }
        for metric, value in point.items():
            metrics[metric] = value
            metrics |= {k: intervals[k] for k in _ci_keys(metric) if k in intervals}
        _write_dataset_files(out_dir, name, index, p, threshold, metrics)
        log.info("%s: %d images, %s", name, len(index), _summary(metrics))
    if seed_models and len(seed_models) >= 2:
        per_seed = _evaluate_seeds(
            seed_models,
            prepared,
            out_dir,
            (device, amp, batch_size),
            referable_rule,
            referable_target,
        )
        for name in prepared:
            results[name]["seeds"] = summarize_seeds({s: m[name] for s, m in per_seed.items()})
    return results


def _open_all(datasets: dict[str, Path]) -> dict[str, tuple[PreparedImages, pd.DataFrame]]:
    prepared = {name: load_prepared(folder) for name, folder in datasets.items()}
    for name, (_, index) in prepared.items():
        if index.empty:
            raise DatasetError(
                f"{datasets[name]}: dataset {name!r} has no images to evaluate (empty index.csv); "
                "check its labels file and rerun prepare-split"
            )
    return prepared


def _predict_all(model, prepared, device, amp, batch_size) -> dict[str, np.ndarray]:
    """{name: probabilities (N, C)} in float64, so that P(referable) written to a CSV reads back
    as the very number the threshold was compared with."""
    model.to(resolve_device(device))
    return {
        name: predict_proba(model, images, batch_size, amp=amp, desc=f"evaluate {name}").astype(
            np.float64
        )
        for name, (images, _) in prepared.items()
    }


def _operating_point(prepared, probs, rule: Rule, target: float) -> float | None:
    """The threshold chosen on val predictions only; None without val or referable grades."""
    if VAL not in prepared or probs[VAL].shape[1] <= REFERABLE_GRADE:
        log.warning("no val split with referable grades: no referable-DR operating point")
        return None
    threshold = choose_threshold(prepared[VAL][1]["grade"].to_numpy(), probs[VAL], rule, target)
    log.info(
        "referable-DR operating point (rule %s on val): P(grade >= 2) >= %.4g", rule, threshold
    )
    return threshold


def _write_dataset_files(out_dir, name, index, probs, threshold, metrics) -> None:
    y_true, table = index["grade"].to_numpy(), predictions_table(index, probs, threshold)
    folder = out_dir / DATASETS_DIR / name
    write_text_atomic(folder / "predictions.csv", table.to_csv(index=False))
    confusion = table[["true_grade", "pred_grade"]].set_axis(["actual", "predicted"], axis=1)
    write_text_atomic(out_dir / CONFUSION_DIR / f"{name}.csv", confusion.to_csv(index=False))
    title = f"{name}: accuracy {metrics['accuracy']:.1f}%, kappa {metrics['kappa']:.3f}"
    write_bytes_atomic(
        folder / "confusion_matrix.png",
        confusion_png(y_true, table["pred_grade"].to_numpy(), probs.shape[1], title),
    )
    title = f"{name}: ECE {metrics['ece']:.3f} ({ECE_BINS} equal-width bins)"
    write_bytes_atomic(folder / "reliability.png", reliability_png(y_true, probs, title))


def _evaluate_seeds(seed_models, prepared, out_dir, predict_args, rule, target):
    """{seed: {dataset: point metrics}}: each seed's model, its threshold chosen on val."""
    per_seed = {}
    for seed_name, folder in seed_models.items():
        model, _ = load_trained_model(folder)
        probs = _predict_all(model, prepared, *predict_args)
        del model  # one seed's model in memory at a time
        threshold = _operating_point(prepared, probs, rule, target)
        per_seed[seed_name] = {}
        for name, (_, index) in prepared.items():
            table = predictions_table(index, probs[name], threshold)
            path = out_dir / DATASETS_DIR / name / "seeds" / f"{seed_name}.csv"
            write_text_atomic(path, table.to_csv(index=False))
            point = evaluation_metrics(index["grade"].to_numpy(), probs[name], threshold)
            extra = {"referable_threshold": threshold} if threshold is not None else {}
            per_seed[seed_name][name] = extra | point
        log.info("seed %s: %s", seed_name, _summary(per_seed[seed_name].get("test", {})))
    return per_seed


def _ci_keys(name: str) -> tuple[str, str, str]:
    return f"{name}_ci_low", f"{name}_ci_high", f"{name}_ci_undefined"


def _summary(metrics: dict[str, float]) -> str:
    parts = []
    for name in ("accuracy", "kappa", "auroc", "referable_sensitivity", "referable_specificity"):
        if name not in metrics:
            continue
        low, high, _ = _ci_keys(name)
        ci = f" [{metrics[low]:.3g}, {metrics[high]:.3g}]" if low in metrics else ""
        parts.append(f"{name} {metrics[name]:.3g}{ci}")
    return ", ".join(parts)

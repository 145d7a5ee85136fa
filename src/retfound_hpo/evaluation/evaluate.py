"""Evaluate a trained model on prepared datasets: the referable-DR operating point fixed on val,
every figure with its interval, calibration, per-exam referral, predictions and figures; given
several seeds' models, every seed's figures with their mean.

metrics.json, keyed by dataset (`val`, `test`, then every evaluate.datasets entry), flat enough
for `dvc metrics diff` (`test.kappa`, `domain_b.referable_sensitivity_ci_low`, ...):

    <dataset>.n_images, ci_unit, ci_units, ci_unit_note   the resampling unit (data/units.py)
    <dataset>.ci_proportions, ci_bootstrap, ci_resamples  what the intervals are
    <dataset>.referable_rule, referable_target, referable_threshold, referable_confidence,
      referable_target_reached, referable_target_met_on, referable_expected_sensitivity[_ci_*]
                         the operating point, chosen on val: the same in every dataset
    <dataset>.<metric>, <metric>_ci_low, <metric>_ci_high (and _ci_undefined where bootstrapped)
    <dataset>.per_exam | per_patient.<metric>   referral by exam (or patient), where they exist
    <dataset>.temperature, <metric>_unscaled     with evaluate.temperature_scaling
    <dataset>.seeds.n, seeds.interval, seeds.<seed>.<metric>, seeds.{mean,sd,ci95_low,ci95_high}
                         with two or more seeds: each seed's model (its own threshold)

dataset_metrics.py computes each dataset's entry from its predictions table; summary.py writes
summary.md from metrics.json. Per dataset, <out_dir>/datasets/<name>/ holds predictions.csv
(predictions.py), confusion_matrix.png, reliability.png (of the grades and of P(referable);
reliability_unscaled.png too with temperature scaling) and, with several seeds, seeds/<seed>.csv;
<out_dir>/confusion/<name>.csv feeds DVC's confusion plot.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from retfound_hpo.core.errors import DatasetError
from retfound_hpo.core.files import write_bytes_atomic, write_text_atomic
from retfound_hpo.core.params import EvaluateConfig
from retfound_hpo.data.prepared import PreparedImages, load_prepared
from retfound_hpo.evaluation.dataset_metrics import IntervalSettings, dataset_metrics
from retfound_hpo.evaluation.figures import confusion_png, reliability_png
from retfound_hpo.evaluation.predictions import predictions_table, table_units
from retfound_hpo.evaluation.seed_summary import summarize_seeds
from retfound_hpo.metrics.calibration import ECE_BINS
from retfound_hpo.metrics.classification import evaluation_metrics
from retfound_hpo.metrics.operating_point import REFERABLE_GRADE
from retfound_hpo.metrics.recalibration import apply_temperature, fit_temperature
from retfound_hpo.metrics.threshold import ThresholdChoice, choose_threshold
from retfound_hpo.model.saved import load_trained_model
from retfound_hpo.training.device import resolve_device
from retfound_hpo.training.inference import predict_proba

log = logging.getLogger(__name__)

VAL = "val"  # the dataset the operating point (and a temperature) is fitted on
DATASETS_DIR = "datasets"  # <out_dir>/datasets/<name>/{predictions.csv, *.png}
CONFUSION_DIR = "confusion"  # <out_dir>/confusion/<name>.csv: DVC's `confusion` plot template
UNSCALED = (
    "ece",
    "referable_ece",
    "referable_calibration_slope",
    "referable_calibration_intercept",
)


def evaluate_datasets(
    model: nn.Module,
    datasets: dict[str, Path],
    out_dir: str | Path,
    config: EvaluateConfig | None = None,
    seed: int = 0,
    device: str = "auto",
    amp: str = "auto",
    batch_size: int = 128,
    seed_models: dict[str, Path] | None = None,
    **overrides,
) -> dict[str, dict]:
    """metrics.json's content (see the module docstring), with the files it lists written.

    `config` is the evaluate section (`overrides`: fields of it, e.g. bootstrap_samples=0).
    The operating point (and a temperature) is fitted on datasets["val"] alone; without a `val`
    entry there is none. Every dataset is opened and checked first (cheap: headers and
    indexes), so that a missing or empty one stops the run before any file is written."""
    config = dataclasses.replace(config or EvaluateConfig(), **overrides)
    out_dir = Path(out_dir)
    prepared = _open_all(datasets)
    raw = _predict_all(model, prepared, device, amp, batch_size)
    probs, temperature = _scaled(prepared, raw, config.temperature_scaling)
    choice = _operating_point(prepared, probs, config)
    settings = _settings(config, seed)
    results = {}
    for name, (_, index) in prepared.items():
        table = predictions_table(
            index, probs[name], choice and choice.threshold, raw[name] if temperature else None
        )
        results[name] = metrics = dataset_metrics(table, choice, settings)
        if temperature is not None:
            unscaled = table.drop(columns=[c for c in table if c.startswith("prob_")])
            unscaled = unscaled.rename(columns=lambda c: c.removeprefix("raw_"))
            before = dataset_metrics(
                unscaled, choice, IntervalSettings(0, method=config.proportion_interval)
            )
            metrics["temperature"] = temperature
            metrics |= {f"{k}_unscaled": before[k] for k in UNSCALED if k in before}
        _write_dataset_files(out_dir, name, table, metrics, temperature is not None)
        log.info("%s: %d images, %s", name, len(index), _summary(metrics))
    if seed_models and len(seed_models) >= 2:
        per_seed = _evaluate_seeds(
            seed_models, prepared, out_dir, (device, amp, batch_size), config
        )
        for name in prepared:
            results[name]["seeds"] = summarize_seeds(
                {s: m[name] for s, m in per_seed.items()}, config.seed_interval
            )
    return results


def _settings(config: EvaluateConfig, seed: int) -> IntervalSettings:
    return IntervalSettings(
        config.bootstrap_samples, seed, config.proportion_interval, config.prevalence
    )


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
    """{name: probabilities (N, C)}, float32 as the model gives them: predictions.csv holds
    them in full, so every figure recomputes exactly from it."""
    model.to(resolve_device(device))
    return {
        name: predict_proba(model, images, batch_size, amp=amp, desc=f"evaluate {name}")
        for name, (images, _) in prepared.items()
    }


def _scaled(prepared, raw, enabled: bool):
    """(probabilities, temperature): temperature-scaled with T fitted on val, or as they are."""
    if not enabled:
        return raw, None
    if VAL not in prepared:
        log.warning("evaluate.temperature_scaling: no val split to fit it on; not scaled")
        return raw, None
    temperature = fit_temperature(prepared[VAL][1]["grade"].to_numpy(), raw[VAL])
    log.info("temperature scaling: T = %.4g, fitted on val", temperature)
    return {name: apply_temperature(p, temperature) for name, p in raw.items()}, temperature


def _operating_point(prepared, probs, config: EvaluateConfig) -> ThresholdChoice | None:
    """The threshold chosen on val predictions only; None without val or referable grades."""
    if VAL not in prepared or probs[VAL].shape[1] <= REFERABLE_GRADE:
        log.warning("no val split with referable grades: no referable-DR operating point")
        return None
    index = prepared[VAL][1]
    choice = choose_threshold(
        index["grade"].to_numpy(),
        probs[VAL],
        config.referable_rule,
        config.referable_target,
        level=config.referable_confidence,
        method=config.proportion_interval,
        units=table_units(predictions_table(index, probs[VAL])),
    )
    log.info(
        "referable-DR operating point (rule %s on val): P(grade >= 2) >= %.6g; val sensitivity "
        "%.3f [%.3f, %.3f]",
        choice.rule,
        choice.threshold,
        choice.sensitivity,
        choice.sensitivity_low,
        choice.sensitivity_high,
    )
    if not choice.reached:
        log.warning(
            "the one-sided %g%% lower bound of val sensitivity reaches %g at no threshold "
            "(%d referable val images): every val image is referred; a larger val split gives "
            "a usable threshold",
            100 * choice.level,
            choice.target,
            choice.n_referable,
        )
    return choice


def _write_dataset_files(out_dir: Path, name: str, table, metrics, scaled: bool) -> None:
    folder = out_dir / DATASETS_DIR / name
    write_text_atomic(folder / "predictions.csv", table.to_csv(index=False))
    confusion = table[["true_grade", "pred_grade"]].set_axis(["actual", "predicted"], axis=1)
    write_text_atomic(out_dir / CONFUSION_DIR / f"{name}.csv", confusion.to_csv(index=False))
    y_true, pred = table["true_grade"].to_numpy(), table["pred_grade"].to_numpy()
    n_classes = sum(c.startswith("prob_") for c in table)
    title = f"{name}: accuracy {metrics['accuracy']:.1f}%, kappa {metrics['kappa']:.3f}"
    write_bytes_atomic(
        folder / "confusion_matrix.png", confusion_png(y_true, pred, n_classes, title)
    )
    for suffix, prefix in [("", "prob_")] + ([("_unscaled", "raw_prob_")] if scaled else []):
        probs = table[[f"{prefix}{c}" for c in range(n_classes)]].to_numpy(np.float32)
        when = " before scaling" if suffix else ""
        title = f"{name}: ECE {metrics[f'ece{suffix}']:.3f} ({ECE_BINS} bins){when}"
        referable = None
        if n_classes > REFERABLE_GRADE:
            ece = metrics[f"referable_ece{suffix}"]
            referable = f"{name}: P(referable), ECE {ece:.3f}{when}"
        png = reliability_png(y_true, probs, title, referable)
        write_bytes_atomic(folder / f"reliability{suffix}.png", png)


def _evaluate_seeds(seed_models, prepared, out_dir, predict_args, config):
    """{seed: {dataset: point metrics}}: each seed's model, its threshold chosen on val."""
    per_seed = {}
    for seed_name, folder in seed_models.items():
        model, _ = load_trained_model(folder)
        raw = _predict_all(model, prepared, *predict_args)
        del model  # one seed's model in memory at a time
        probs, _ = _scaled(prepared, raw, config.temperature_scaling)
        choice = _operating_point(prepared, probs, config)
        threshold = None if choice is None else choice.threshold
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


def _summary(metrics: dict[str, float]) -> str:
    parts = []
    for name in ("accuracy", "kappa", "auroc", "referable_sensitivity", "referable_specificity"):
        if name not in metrics:
            continue
        low = f"{name}_ci_low"
        ci = f" [{metrics[low]:.3g}, {metrics[f'{name}_ci_high']:.3g}]" if low in metrics else ""
        parts.append(f"{name} {metrics[name]:.3g}{ci}")
    return ", ".join(parts)

"""Every figure of one dataset, computed from its predictions table (predictions.py) alone.

Point estimates are metrics.classification's; intervals follow one rule, stated in metrics.json
(`ci_*`) and summary.md: proportions (accuracy, per-grade and referable sensitivity,
specificity, PPV, NPV) get `evaluate.proportion_interval` (Wilson or Clopper-Pearson) widened
by the design effect of the resampling unit; AUROC, kappa, F1, the RETFound score and ECE a
percentile cluster bootstrap of units; PPV and NPV at a stated prevalence the score interval of
the likelihood ratios; calibration slope and intercept Wald intervals (cluster-robust); per-exam
AUROC the logit interval with Obuchowski's clustered variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retfound_hpo.data.units import describe_units, joining
from retfound_hpo.evaluation.predictions import table_probs, table_units
from retfound_hpo.metrics.bootstrap import bootstrap_intervals
from retfound_hpo.metrics.classification import evaluation_metrics
from retfound_hpo.metrics.delong import auroc_interval
from retfound_hpo.metrics.operating_point import REFERABLE_GRADE, referable_score
from retfound_hpo.metrics.predictive import predictive_values
from retfound_hpo.metrics.proportions import ProportionMethod, clustered_proportion_interval
from retfound_hpo.metrics.recalibration import calibration_slope_intercept, weighted_binary_ece
from retfound_hpo.metrics.threshold import ThresholdChoice

BOOTSTRAPPED = ("kappa", "kappa_unweighted", "auroc", "f1", "retfound", "ece")
BOOTSTRAPPED_REFERABLE = ("referable_auroc", "referable_ece")
BIASED = ("ece", "referable_ece")  # statistics whose bootstrap bias is stated


@dataclass(frozen=True)
class IntervalSettings:
    """How the intervals are made (evaluate.* params)."""

    bootstrap_samples: int = 1000
    seed: int = 0
    method: ProportionMethod = "wilson"
    prevalence: float | None = None
    level: float = 0.95


def _proportion(successes, units, settings: IntervalSettings, scale: float = 1.0):
    """(low, high, design effect) of a proportion over the images given, scaled."""
    if not len(successes):
        return float("nan"), float("nan"), float("nan")
    res = clustered_proportion_interval(successes, units, settings.level, settings.method)
    return float(res.low) * scale, float(res.high) * scale, float(res.deff)


def _referable_counts(positive, referred, units, settings, prefix="referable_") -> dict:
    """Sensitivity, specificity, PPV and NPV intervals; at the stated prevalence too."""
    out, deff = {}, {}
    for name, hit, among in (
        ("sensitivity", referred, positive),
        ("specificity", ~referred, ~positive),
        ("ppv", positive, referred),
        ("npv", ~positive, ~referred),
    ):
        low, high, deff[name] = _proportion(hit[among], units[among], settings)
        out |= {f"{prefix}{name}_ci_low": low, f"{prefix}{name}_ci_high": high}
    if settings.prevalence is not None and positive.any() and (~positive).any():
        tp, fn = (positive & referred).sum(), (positive & ~referred).sum()
        tn, fp = (~positive & ~referred).sum(), (~positive & referred).sum()
        # effective counts: each class's images shrunk by its design effect (1 if independent)
        pv = predictive_values(
            tp / deff["sensitivity"],
            fn / deff["sensitivity"],
            tn / deff["specificity"],
            fp / deff["specificity"],
            settings.prevalence,
            settings.level,
        )
        out[f"{prefix}ppv_at_prevalence"] = pv.ppv
        out[f"{prefix}ppv_at_prevalence_ci_low"] = pv.ppv_low
        out[f"{prefix}ppv_at_prevalence_ci_high"] = pv.ppv_high
        out[f"{prefix}npv_at_prevalence"] = pv.npv
        out[f"{prefix}npv_at_prevalence_ci_low"] = pv.npv_low
        out[f"{prefix}npv_at_prevalence_ci_high"] = pv.npv_high
    return out


def operating_point_keys(choice: ThresholdChoice) -> dict[str, object]:
    """The operating point as metrics.json states it (the same in every dataset)."""
    out: dict[str, object] = {"referable_rule": choice.rule}
    if choice.target is not None:
        out["referable_target"] = choice.target
    out["referable_threshold"] = choice.threshold
    if choice.rule == "sensitivity_lcb":
        out["referable_confidence"] = choice.level
    out["referable_target_reached"] = choice.reached
    out["referable_target_met_on"] = "val" if choice.reached else "none (every val image referred)"
    out["referable_expected_sensitivity"] = choice.sensitivity
    out["referable_expected_sensitivity_ci_low"] = choice.sensitivity_low
    out["referable_expected_sensitivity_ci_high"] = choice.sensitivity_high
    out["referable_expected_sensitivity_lower_bound"] = choice.sensitivity_bound
    return out


def grouped_referral(
    table: pd.DataFrame, threshold: float, units: np.ndarray, settings: IntervalSettings
) -> tuple[str, dict] | None:
    """('per_exam' or 'per_patient', figures) where exams (else patients) hold several images:
    a group is referable when any image is, referred when any image's P(referable) reaches the
    threshold (its score is the highest of its images'). None when every group is one image."""
    found = [c for c in joining(table) if c in ("exam", "patient")]
    if not found:
        return None
    column = "exam" if "exam" in found else "patient"
    groups = table[column].where(table[column] != "", table["id"])
    per = pd.DataFrame(
        {"grade": table["true_grade"], "score": table["p_referable"], "unit": units}
    ).groupby(groups.to_numpy(), sort=False)
    positive = per["grade"].max().to_numpy() >= REFERABLE_GRADE
    score = per["score"].max().to_numpy()
    group_units = per["unit"].first().to_numpy()
    out: dict[str, object] = {"n": int(len(positive)), "n_images": len(table)}
    referred = score >= threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        out["referable_sensitivity"] = float((referred & positive).sum() / positive.sum())
        out["referable_specificity"] = float((~referred & ~positive).sum() / (~positive).sum())
        out["referable_ppv"] = float((referred & positive).sum() / referred.sum())
        out["referable_npv"] = float((~referred & ~positive).sum() / (~referred).sum())
    out |= _referable_counts(positive, referred, group_units, settings)
    if positive.any() and (~positive).any():
        auc, low, high = auroc_interval(positive, score, settings.level, group_units)
        out |= {"referable_auroc": auc, "referable_auroc_ci_low": low}
        out["referable_auroc_ci_high"] = high
    return f"per_{column}", dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def _order(key: str) -> tuple[str, int]:
    """Sort a metric before its interval keys."""
    for i, suffix in enumerate(("_ci_low", "_ci_high", "_ci_undefined", "_bootstrap_bias")):
        if key.endswith(suffix):
            return key[: -len(suffix)], i + 1
    return key, 0


def dataset_metrics(
    table: pd.DataFrame, choice: ThresholdChoice | None, settings: IntervalSettings
) -> dict[str, object]:
    """metrics.json's entry for one dataset (see the module docstring and evaluate.py)."""
    y, probs, units = table["true_grade"].to_numpy(int), table_probs(table), table_units(table)
    threshold = None if choice is None else choice.threshold
    unit = describe_units(table, pd.Series(units))
    out: dict[str, object] = {
        "n_images": len(table),
        "ci_unit": unit["unit"],
        "ci_units": unit["units"],
        "ci_unit_note": unit["unit_note"],
        "ci_proportions": f"{settings.method}, widened by the design effect of the unit",
    }
    if settings.bootstrap_samples:
        out["ci_bootstrap"] = "percentile cluster bootstrap of units"
        out["ci_resamples"] = settings.bootstrap_samples
    if choice is not None:
        out |= operating_point_keys(choice)
    metrics = dict(evaluation_metrics(y, probs, threshold))
    correct = probs.argmax(axis=1) == y
    metrics |= dict(
        zip(
            ("accuracy_ci_low", "accuracy_ci_high"),
            _proportion(correct, units, settings, 100.0)[:2],
            strict=True,
        )
    )
    for c in range(probs.shape[1]):
        low, high, _ = _proportion(correct[y == c], units[y == c], settings)
        metrics |= {f"sensitivity_grade_{c}_ci_low": low, f"sensitivity_grade_{c}_ci_high": high}
    if probs.shape[1] > REFERABLE_GRADE:
        positive, score = y >= REFERABLE_GRADE, referable_score(probs)
        metrics["referable_ece"] = float(
            weighted_binary_ece(positive, score, np.ones((1, len(y))))[0]
        )
        calibration = calibration_slope_intercept(positive, score, units, settings.level)
        metrics |= {f"referable_{k}": v for k, v in calibration.items()}
        if threshold is not None:
            referred = score >= threshold
            metrics |= _referable_counts(positive, referred, units, settings)
            if settings.prevalence is not None:
                out["prevalence"] = settings.prevalence
    if settings.bootstrap_samples:
        boot = bootstrap_intervals(
            y, probs, units, settings.bootstrap_samples, settings.seed, settings.level, threshold
        )
        for name in (*BOOTSTRAPPED, *BOOTSTRAPPED_REFERABLE):
            if name in boot and name in metrics:
                b = boot[name]
                # Every resample the same value (kappa 0 of a model that predicts one grade,
                # AUROC 1 of a perfect separation): no interval, not a zero-width one.
                same = b["low"] == b["high"]
                low, high = (float("nan"),) * 2 if same else (b["low"], b["high"])
                metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
                metrics[f"{name}_ci_undefined"] = b["undefined"]
                if name in BIASED:
                    metrics[f"{name}_bootstrap_bias"] = b["mean"] - metrics[name]
    out |= dict(sorted(metrics.items(), key=lambda kv: _order(kv[0])))
    if threshold is not None and "p_referable" in table:
        grouped = grouped_referral(table, threshold, units, settings)
        if grouped is not None:
            out[grouped[0]] = grouped[1]
    return out

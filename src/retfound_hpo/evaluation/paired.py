"""The paired comparison of two variants' predictions on the same images: each metric's
difference B - A with its interval and p-value (see compare.py for the command and its output).

Every resample draws the same resampling units (data/units.py: patients, exams, duplicate
groups) for both variants, so the variation the two share (which images happen to be hard)
cancels. The bootstrap p-value is two-sided and comes from the same resamples as the interval:
twice the smaller share of resampled differences at or below zero and at or above zero, with
the usual +1 Monte-Carlo correction (never 0), so p < 0.05 about when the 95 % interval
excludes zero. A resample where a metric is undefined for either variant (e.g. no grade-4 image
drawn) is left out for that metric, and the resamples used are counted.

The referable AUROC also gets DeLong's test (Obuchowski's clustered variance where units hold
several images), as papers report it; the bootstrap stays beside it as a check. Holm's
correction runs over the metrics compared on a dataset (DeLong's p for the referable AUROC,
the bootstrap's for the others): `p_holm` controls the family-wise error at 5 %.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retfound_hpo.core.errors import DatasetError, UserError
from retfound_hpo.evaluation.predictions import table_units
from retfound_hpo.metrics.bootstrap import bootstrap_weights, percentile_interval
from retfound_hpo.metrics.classification import weighted_metrics
from retfound_hpo.metrics.delong import delong_test, holm
from retfound_hpo.metrics.operating_point import (
    REFERABLE_GRADE,
    referable_score,
    weighted_operating_point,
)

DEFAULT_METRICS = (
    "accuracy",
    "kappa",
    "auroc",
    "f1",
    "referable_auroc",
    "referable_sensitivity",  # at each variant's own operating point, fixed on its val split
    "referable_specificity",
)
PROB_COLUMN = re.compile(r"prob_(\d+)")


@dataclass
class Paired:
    """Both variants' predictions on the same images, in A's row order."""

    ids: pd.Series
    y_true: np.ndarray  # (N,)
    probs: tuple[np.ndarray, np.ndarray]  # A's and B's, (N, C) each
    # A's and B's referable-DR decisions (N,), each at its own threshold fixed on val
    referred: tuple[np.ndarray, np.ndarray] | None = None
    units: np.ndarray | None = None  # (N,) resampling units; None: every image its own


def paired_predictions(a: pd.DataFrame, b: pd.DataFrame, name: str) -> Paired:
    """Match B's predictions.csv rows to A's by image id; refuse if the images differ."""
    for side, table in (("A", a), ("B", b)):
        if table["id"].duplicated().any():
            dup = table.loc[table["id"].duplicated(), "id"].iloc[0]
            raise DatasetError(f"{name}: {side}'s predictions list image {dup!r} twice")
    only_a = sorted(set(a["id"]) - set(b["id"]))
    only_b = sorted(set(b["id"]) - set(a["id"]))
    if only_a or only_b:
        example = (only_a or only_b)[0]
        raise DatasetError(
            f"{name}: A and B graded different images ({len(only_a)} only in A, {len(only_b)} "
            f"only in B, e.g. {example!r}); compare variants evaluated on the same data"
        )
    b = b.set_index("id").loc[a["id"]].reset_index()
    if not (a["true_grade"].to_numpy() == b["true_grade"].to_numpy()).all():
        raise DatasetError(f"{name}: A and B give the same images different true grades")
    cols_a, cols_b = _prob_columns(a), _prob_columns(b)
    if cols_a != cols_b:
        raise DatasetError(f"{name}: A has columns {cols_a}, B has {cols_b}: different grades")
    both = "referable" in a.columns and "referable" in b.columns  # older runs lack it
    grouped = [t for t in (a, b) if "unit" in t.columns] or [
        t for t in (a, b) if "patient" in t.columns
    ]  # the recorded unit; in older files the patient
    return Paired(
        ids=a["id"],
        y_true=a["true_grade"].to_numpy(dtype=int),
        probs=(a[cols_a].to_numpy(), b[cols_b].to_numpy()),  # as written: float32
        referred=(a["referable"].to_numpy(bool), b["referable"].to_numpy(bool)) if both else None,
        units=table_units(grouped[0]) if grouped else None,
    )


def _prob_columns(table: pd.DataFrame) -> list[str]:
    cols = [c for c in table.columns if PROB_COLUMN.fullmatch(c)]
    return sorted(cols, key=lambda c: int(PROB_COLUMN.fullmatch(c).group(1)))


def _weighted(
    y_true: np.ndarray, probs: np.ndarray, referred: np.ndarray | None, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """One variant's metrics for B weightings (B, N) -> {name: (B,)}, the operating point's
    sensitivity, specificity, PPV and NPV from its recorded decisions."""
    out = weighted_metrics(y_true, probs, weights)
    if referred is not None:
        # The decisions as the only P(grade >= 2) mass, threshold 0.5: weighted_operating_point
        # then counts exactly the decisions predictions.csv records.
        mass = np.zeros((len(y_true), REFERABLE_GRADE + 1))
        mass[:, REFERABLE_GRADE] = referred
        out |= weighted_operating_point(y_true, mass, 0.5, weights)
    return out


def paired_bootstrap(
    paired: Paired,
    metrics: tuple[str, ...] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float | int]]:
    """Per metric (default: DEFAULT_METRICS that the predictions allow): A, B, diff (B - A), its
    percentile interval, p-value and the resamples used.

    Resamples draw paired.units (images when None), as evaluation's intervals do."""
    y, (probs_a, probs_b) = paired.y_true, paired.probs
    referred_a, referred_b = paired.referred or (None, None)
    ones = np.ones((1, len(y)))
    point_a = {k: float(v[0]) for k, v in _weighted(y, probs_a, referred_a, ones).items()}
    point_b = {k: float(v[0]) for k, v in _weighted(y, probs_b, referred_b, ones).items()}
    if metrics is None:
        metrics = tuple(m for m in DEFAULT_METRICS if m in point_a)
    unknown = [m for m in metrics if m not in point_a]
    if unknown:
        raise UserError(f"--metric {unknown[0]}: not a metric here; choose from {sorted(point_a)}")
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    units = np.arange(len(y)) if paired.units is None else paired.units
    for weights in bootstrap_weights(units, n_resamples, seed):
        on_a = _weighted(y, probs_a, referred_a, weights)  # the same resamples for both
        on_b = _weighted(y, probs_b, referred_b, weights)
        for m in metrics:
            diffs[m].append(on_b[m] - on_a[m])
    out = {}
    for m in metrics:
        d = np.concatenate(diffs[m]) if diffs[m] else np.empty(0)
        d = d[np.isfinite(d)]
        low, high, _ = percentile_interval(d, level)
        out[m] = {
            "a": point_a[m],
            "b": point_b[m],
            "diff": point_b[m] - point_a[m],
            "ci_low": low,
            "ci_high": high,
            "p_value": _p_value(d),
            "n_resamples": int(d.size),
        }
    return out


def _p_value(d: np.ndarray) -> float:
    """Two-sided bootstrap p-value that the difference is zero (NaN without resamples)."""
    if not d.size:
        return float("nan")
    smaller = min((d <= 0).sum(), (d >= 0).sum())
    return float(min(1.0, 2.0 * (smaller + 1) / (d.size + 1)))


def paired_comparison(
    paired: Paired,
    metrics: tuple[str, ...] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, object]]:
    """paired_bootstrap's result, with DeLong's test of the referable AUROC under
    `referable_auroc.delong` and Holm's adjusted p-value (`p_holm`) of every metric."""
    out = paired_bootstrap(paired, metrics, n_resamples, seed, level)
    y, (probs_a, probs_b) = paired.y_true, paired.probs
    positive = y >= REFERABLE_GRADE
    if "referable_auroc" in out and positive.any() and (~positive).any():
        r = delong_test(
            positive, referable_score(probs_a), referable_score(probs_b), level, paired.units
        )
        out["referable_auroc"]["delong"] = {
            "diff": r.diff,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "z": r.z,
            "p_value": r.p_value,
            "method": r.method,
            "n_units": r.n_units,
        }
    family = [r["delong"]["p_value"] if "delong" in r else r["p_value"] for r in out.values()]
    _, adjusted = holm(np.array(family, float))
    for r, p in zip(out.values(), adjusted, strict=True):
        r["p_holm"] = float(p)
    return out

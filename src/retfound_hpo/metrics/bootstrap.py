"""Cluster bootstrap: seeded resamples of resampling units, as image weights; percentile intervals.

A resample draws as many units as there are, with replacement, and a drawn unit brings all of
its images (both eyes of a patient, both images of an exam, every copy of a duplicated
photograph). It is a row of image weights (how often each image is drawn), so that one
vectorised pass of metrics.classification.weighted_metrics scores a whole batch of resamples.
The evaluation uses these intervals for AUROC, kappa, F1, the RETFound score and ECE; the
proportions get the intervals of proportions.py instead (a percentile interval collapses to a
point at 0 and 1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from retfound_hpo.metrics.classification import weighted_metrics
from retfound_hpo.metrics.operating_point import REFERABLE_GRADE, referable_score
from retfound_hpo.metrics.proportions import check_level, unit_codes
from retfound_hpo.metrics.recalibration import weighted_binary_ece

RESAMPLE_CHUNK = 128  # resamples per vectorised batch: bounds memory at 128 x N weights


def bootstrap_indices(n_units: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled unit indices in (chunk, n_units) batches, drawn with replacement from one
    seeded generator: row b of the concatenated batches is resample b."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, RESAMPLE_CHUNK):
        rows = min(RESAMPLE_CHUNK, n_resamples - start)
        yield rng.integers(0, n_units, size=(rows, n_units))


def bootstrap_weights(units: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Image weights in (chunk, N) batches: weights[b, i] is how many times resample b drew the
    unit of image i; `units` (N,) labels each image's unit (any hashable labels)."""
    codes, sizes = unit_codes(units)
    n_units = len(sizes)
    for idx in bootstrap_indices(n_units, n_resamples, seed):
        flat = (idx + n_units * np.arange(len(idx))[:, None]).ravel()
        drawn = np.bincount(flat, minlength=idx.size).reshape(idx.shape)  # (chunk, U)
        yield drawn[:, codes].astype(float)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, int]:
    """(low, high, n_undefined): the percentile interval of bootstrap values, NaN ones left
    out (and counted); NaN bounds when none is defined."""
    tail = 50.0 * check_level(level)
    values = np.asarray(values, float)
    defined = values[np.isfinite(values)]
    if not defined.size:
        return float("nan"), float("nan"), int(values.size)
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return float(low), float(high), int(values.size - defined.size)


def resampled_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """Every evaluation metric for B weightings (B, N): weighted_metrics plus the binary ECE of
    P(referable) (`referable_ece`)."""
    out = weighted_metrics(y_true, probs, weights, threshold)
    if probs.shape[1] > REFERABLE_GRADE:
        positive = np.asarray(y_true) >= REFERABLE_GRADE
        out["referable_ece"] = weighted_binary_ece(positive, referable_score(probs), weights)
    return out


def bootstrap_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    units: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float | None = None,
) -> dict[str, dict[str, float | int]]:
    """Per metric: the percentile cluster-bootstrap interval (`low`, `high`), the resamples
    where the metric was undefined and left out (`undefined`, e.g. macro AUROC in a resample
    without a grade-4 image), and the mean of the defined resampled values (`mean`, which
    measures the bootstrap bias of a statistic such as ECE)."""
    y_true = np.asarray(y_true)
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    for weights in bootstrap_weights(units, n_resamples, seed):
        for name, v in resampled_metrics(y_true, probs, weights, threshold).items():
            values[name].append(v)
    out = {}
    for name, chunks in values.items():
        v = np.concatenate(chunks)
        low, high, undefined = percentile_interval(v, level)
        mean = float(np.mean(v[np.isfinite(v)])) if undefined < v.size else float("nan")
        out[name] = {"low": low, "high": high, "undefined": undefined, "mean": mean}
    return out

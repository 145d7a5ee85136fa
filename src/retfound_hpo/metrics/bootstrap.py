"""Bootstrap intervals: resampling units (patients or images), seeded resamples as image weights.

A resample is a row of image weights (how often each image is drawn), so that one vectorised
pass of metrics.classification.weighted_metrics scores a whole batch of resamples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pandas as pd

from retfound_hpo.metrics.classification import weighted_metrics

RESAMPLE_CHUNK = 128  # resamples per vectorised batch: bounds memory at 128 x N weights


def resampling_units(patients: np.ndarray | None, n_images: int) -> tuple[str, np.ndarray]:
    """('patient', each image's patient number) when some patient has several images, else
    ('image', 0..N-1). Patients are numbered in order of first appearance."""
    if patients is not None:
        codes, uniques = pd.factorize(np.asarray(patients))
        if len(uniques) < n_images:
            return "patient", codes
    return "image", np.arange(n_images)


def bootstrap_indices(n_units: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled unit indices in (chunk, n_units) batches, drawn with replacement from one
    seeded generator: row b of the concatenated batches is resample b."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, RESAMPLE_CHUNK):
        rows = min(RESAMPLE_CHUNK, n_resamples - start)
        yield rng.integers(0, n_units, size=(rows, n_units))


def bootstrap_weights(units: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Image weights in (chunk, N) batches: weights[b, i] is how many times resample b drew the
    unit (patient or image) that image i belongs to; `units` (N,) numbers the units 0..U-1."""
    n_units = int(units.max()) + 1
    for idx in bootstrap_indices(n_units, n_resamples, seed):
        flat = (idx + n_units * np.arange(len(idx))[:, None]).ravel()
        drawn = np.bincount(flat, minlength=idx.size).reshape(idx.shape)  # (chunk, U)
        yield drawn[:, units].astype(float)


def bootstrap_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    patients: np.ndarray | None = None,
    threshold: float | None = None,
) -> dict[str, float | int | str]:
    """Percentile bootstrap intervals of every evaluation metric.

    Returns `ci_unit` ('patient' or 'image', see resampling_units), `ci_units` (how many),
    `ci_resamples`, and per metric `<metric>_ci_low`, `<metric>_ci_high` and
    `<metric>_ci_undefined`: the resamples where the metric was undefined, left out of its
    interval. Bounds are NaN when no resample defines the metric."""
    y_true = np.asarray(y_true)
    unit, units = resampling_units(patients, len(y_true))
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    for weights in bootstrap_weights(units, n_resamples, seed):
        for name, v in weighted_metrics(y_true, probs, weights, threshold).items():
            values[name].append(v)
    tail = 50.0 * (1.0 - level)
    out: dict[str, float | int | str] = {
        "ci_unit": unit,
        "ci_units": int(units.max()) + 1,
        "ci_resamples": n_resamples,
    }
    for name, chunks in values.items():
        v = np.concatenate(chunks)
        defined = v[np.isfinite(v)]
        low, high = np.percentile(defined, [tail, 100.0 - tail]) if defined.size else (np.nan,) * 2
        out |= {f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}
        out[f"{name}_ci_undefined"] = int(v.size - defined.size)
    return out

"""Several seeds of one configuration: each seed's figures, their mean and its interval.

The interval (`evaluate.seed_interval`) is by default Student's t with n - 1 degrees of
freedom, which covers 95 % with 3 seeds where RETFound's mean +- 1.96 x SD / sqrt(n) covers
about 81 % (BENCHMARKS.md); RETFound's stays available as `retfound_1.96`, for comparison with
their tables. Bounds are clipped to the metric's range. It measures how much the result moves
with the seed (initialisation, data order, augmentation), not the sampling of images that the
other intervals measure; the two answer different questions and are reported side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retfound_hpo.metrics.seeds import SeedMethod, seed_interval, seed_interval_label
from retfound_hpo.model.saved import MODEL_CONFIG_FILE

UNBOUNDED = ("calibration_slope", "calibration_intercept")


def metric_range(name: str) -> tuple[float | None, float | None]:
    """The values a metric can take: accuracy 0-100, kappa -1-1, most others 0-1."""
    if name == "accuracy":
        return 0.0, 100.0
    if name.startswith("kappa"):
        return -1.0, 1.0
    if any(part in name for part in UNBOUNDED) or name == "temperature":
        return None, None
    return 0.0, 1.0


def find_seed_models(folder: str | Path) -> dict[str, Path]:
    """{seed: model folder} for every <folder>/<seed>/ that holds a saved model, by seed number."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = [p for p in folder.iterdir() if p.name.isdigit() and (p / MODEL_CONFIG_FILE).is_file()]
    return {p.name: p for p in sorted(found, key=lambda p: int(p.name))}


def summarize_seeds(
    per_seed: dict[str, dict[str, float]], method: SeedMethod = "t", level: float = 0.95
) -> dict[str, object]:
    """`n`, `interval` (what it is, in words), each seed's metrics under its name, and per
    metric `mean`, `sd`, `ci95_low`, `ci95_high` over the seeds (NaN where a seed's value is
    undefined)."""
    seeds = list(per_seed)
    n = len(seeds)
    if n < 2:
        raise ValueError(f"a seed interval needs two or more seeds, got {n}")
    summary: dict[str, object] = {"n": n, "interval": seed_interval_label(method, n, level)}
    summary |= per_seed
    first = per_seed[seeds[0]]
    names = [m for m, v in first.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    mean, sd, low, high = {}, {}, {}, {}
    for m in names:
        values = np.array([per_seed[s][m] for s in seeds], dtype=float)
        lo, hi = metric_range(m)
        mean[m], low[m], high[m] = (float(v) for v in seed_interval(values, level, method, lo, hi))
        sd[m] = float(values.std(ddof=1))
    summary |= {"mean": mean, "sd": sd, "ci95_low": low, "ci95_high": high}
    return summary

"""Several seeds of one configuration: each seed's figures, their mean and RETFound's interval.

RETFound reports each figure as the mean over seeds with a 95 % interval of
mean +- 1.96 x SD / sqrt(n) (SD with ddof=1, over the n seeds). It measures how much the result
moves with the seed (initialisation, data order, augmentation), not the sampling of images that
the bootstrap interval measures; the two answer different questions and are reported side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retfound_hpo.model.saved import MODEL_CONFIG_FILE

Z95 = 1.96


def find_seed_models(folder: str | Path) -> dict[str, Path]:
    """{seed: model folder} for every <folder>/<seed>/ that holds a saved model, by seed number."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = [p for p in folder.iterdir() if p.name.isdigit() and (p / MODEL_CONFIG_FILE).is_file()]
    return {p.name: p for p in sorted(found, key=lambda p: int(p.name))}


def summarize_seeds(per_seed: dict[str, dict[str, float]]) -> dict[str, object]:
    """`n`, each seed's metrics under its name, and per metric `mean`, `sd`, `ci95_low`,
    `ci95_high` over the seeds (NaN where a seed's value is undefined)."""
    seeds = list(per_seed)
    n = len(seeds)
    if n < 2:
        raise ValueError(f"a seed interval needs two or more seeds, got {n}")
    summary: dict[str, object] = {"n": n, **per_seed}
    values = {m: np.array([per_seed[s][m] for s in seeds], dtype=float) for m in per_seed[seeds[0]]}
    mean = {m: float(v.mean()) for m, v in values.items()}
    sd = {m: float(v.std(ddof=1)) for m, v in values.items()}
    half = {m: Z95 * sd[m] / np.sqrt(n) for m in values}
    summary["mean"], summary["sd"] = mean, sd
    summary["ci95_low"] = {m: mean[m] - half[m] for m in values}
    summary["ci95_high"] = {m: mean[m] + half[m] for m in values}
    return summary

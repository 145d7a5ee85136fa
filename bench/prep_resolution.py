"""Does source resolution matter once images are prepared? The same synthetic fundus photographs
stored at ~3000 px and at 256 px: preparation speed, then the epoch time of training on each cache.

    python bench/prep_resolution.py [--n 200] [--format png|jpeg] [--epochs 1] [--repeats 6]

Prints JSON: images/s of preparation on all usable cores, per-epoch training seconds on each
cache (demo model with LoRA; GPU if there is one) and their ratio, from the fastest epochs. Needs
only the demo backbone (models/demo_backbone/checkpoint.pth); everything else is made in a tmp dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from retfound_hpo.core.params import ModelConfig, TrainConfig
from retfound_hpo.core.system import usable_cpus
from retfound_hpo.data.demo.render import CAMERA_A, render_fundus
from retfound_hpo.data.preprocess import prepare_images
from retfound_hpo.model.adapters import build_model
from retfound_hpo.training.inputs import CachedImages, load_cached
from retfound_hpo.training.loop import fit

SOURCES = {"large": 3000, "small": 256}  # source image width (px)
CHECKPOINT = "models/demo_backbone/checkpoint.pth"


def write_image(i: int, out: Path, fmt: str, seed: int) -> tuple[str, int]:
    """Render image i once and store it at every source width; returns (id, grade)."""
    grade = i % 5
    img = Image.fromarray(render_fundus(grade, np.random.default_rng([seed, i]), CAMERA_A, 2.0))
    for name, width in SOURCES.items():
        height = round(width * img.height / img.width)
        resized = img.resize((width, height), Image.Resampling.BICUBIC)
        # PNG like APTOS-2019 (lossless, slow to decode); JPEG like EyePACS.
        options = {"compress_level": 1} if fmt == "png" else {"quality": 95}
        resized.save(out / name / f"{i:05d}.{fmt}", **options)
    return f"{i:05d}", grade


def make_sources(out: Path, n: int, fmt: str, seed: int) -> dict[str, pd.DataFrame]:
    for name in SOURCES:
        (out / name).mkdir(parents=True)
    with ProcessPoolExecutor(usable_cpus()) as pool:
        rows = list(pool.map(partial(write_image, out=out, fmt=fmt, seed=seed), range(n)))
    return {
        name: pd.DataFrame(
            [(i, str(out / name / f"{i}.{fmt}"), g, i) for i, g in rows],
            columns=["id", "path", "grade", "patient"],
        )
        for name in SOURCES
    }


def epoch_seconds(cache: Path, val: CachedImages, epochs: int, seed: int) -> list[float]:
    """Train the demo model with LoRA on a prepared cache; seconds of each training epoch."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(checkpoint=CHECKPOINT), 8, 16, 0.1)
    result = fit(
        model, load_cached(cache), val,
        epochs=epochs, batch_size=16, learning_rate=3e-3, weight_decay=0.05, patience=epochs,
        metric="accuracy", cfg=TrainConfig(), seed=seed,
    )  # fmt: skip
    return [row["epoch_seconds"] for row in result.history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per source resolution")
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--size", type=int, default=ModelConfig().input_size, help="cache px")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per training run")
    parser.add_argument("--repeats", type=int, default=6, help="training runs per cache")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict = {"images": args.n, "format": args.format, "cache_px": args.size}
    results["source_px"] = SOURCES
    with tempfile.TemporaryDirectory() as tmp:
        tables = make_sources(Path(tmp) / "sources", args.n, args.format, args.seed)
        prep = results["prepare"] = {}
        for name, table in tables.items():
            start = time.perf_counter()
            prepare_images(table, Path(tmp) / "prepared" / name, args.size)
            seconds = time.perf_counter() - start
            mb = sum(Path(p).stat().st_size for p in table["path"]) / 1e6
            prep[name] = {
                "seconds": round(seconds, 2),
                "images_per_s": round(len(table) / seconds, 1),
                "source_mb": round(mb, 1),
            }
        prep["workers"] = usable_cpus()
        # Same validation set for both (a slice of one cache): only the training data differs.
        val = load_cached(Path(tmp) / "prepared" / "small")
        val = CachedImages(np.array(val.images[:40]), val.grades[:40])
        # Short runs, alternating which cache goes first: load from other processes then hits
        # both alike, and the minimum (noise only ever adds time) compares them.
        times: dict[str, list[float]] = {name: [] for name in SOURCES}
        epoch_seconds(Path(tmp) / "prepared" / "small", val, 1, args.seed)  # one-time warm-up
        for repeat in range(args.repeats):
            for name in sorted(SOURCES, reverse=bool(repeat % 2)):
                cache = Path(tmp) / "prepared" / name
                times[name] += epoch_seconds(cache, val, args.epochs, args.seed)
        results["epoch_seconds"] = {
            name: {
                "min": round(min(t), 3),
                "median": round(statistics.median(t), 3),
                "all": [round(x, 3) for x in t],
            }
            for name, t in times.items()
        }
        for stat in ("min", "median"):
            ratio = (
                results["epoch_seconds"]["large"][stat] / results["epoch_seconds"]["small"][stat]
            )
            results[f"epoch_time_ratio_{stat}"] = round(ratio, 3)
        results["within_5_percent"] = abs(results["epoch_time_ratio_min"] - 1) <= 0.05
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

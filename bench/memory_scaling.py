"""Peak resident memory of the hpo-search stage at 1,000 and 10,000 prepared images.

Each size runs the real stage script (one trial, one epoch, the demo model at 96 px) in its own
process on random prepared images; the kernel's rusage of that process gives its peak RSS.
Target: growth <= 20 % from 1k to 10k images. Prints JSON.

    python bench/memory_scaling.py [--sizes 1000 10000] [--input-size 96]
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from stage_runner import demo_params, run_hpo_search


def write_random_prepared(folder: Path, n: int, size: int, seed: int) -> None:
    """A prepared set of n random images, written in chunks (this script stays small too)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = np.lib.format.open_memmap(
        folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
    )
    for start in range(0, n, 1000):
        stop = min(n, start + 1000)
        images[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)
    images.flush()
    del images
    ids = [f"img{i}" for i in range(n)]
    grades = rng.integers(0, 5, n)
    pd.DataFrame({"id": ids, "grade": grades, "patient": ids, "path": ids}).to_csv(
        folder / "index.csv", index=False
    )


def params_for(input_size: int) -> dict:
    params = demo_params(
        n_trials=1,
        num_epochs=1,
        pruner="none",
        search_space={"batch_size": {"type": "categorical", "choices": [32]}},
    )
    params["data"]["prepared_dir"] = "prepared"
    params["model"]["input_size"] = input_size
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--input-size", type=int, default=96)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            workdir = Path(tmp) / f"n{n}"
            n_val = max(10, n * 15 // 100)  # the demo's val share; test is never read here
            write_random_prepared(workdir / "prepared/train", n - n_val, args.input_size, 0)
            write_random_prepared(workdir / "prepared/val", n_val, args.input_size, 1)
            rss, seconds = run_hpo_search(workdir, params_for(args.input_size))
            results[str(n)] = {"peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1)}
    small, large = (results[str(n)]["peak_rss_mib"] for n in (args.sizes[0], args.sizes[-1]))
    growth = 100 * (large / small - 1)
    print(
        json.dumps(
            {
                "benchmark": "hpo-search peak RSS vs data set size",
                "input_size": args.input_size,
                "images": results,
                "growth_percent": round(growth, 1),
                "target_growth_percent": 20,
                "meets_target": growth <= 20,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

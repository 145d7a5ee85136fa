"""Parallel speed-up: trials per hour of the demo search with 1 and with 2 workers on CPU.

Runs the hpo-search stage on the demo's prepared data with a fixed trial cost (one batch size,
no pruning, no early stopping) so that only the number of workers differs. With one worker,
PyTorch uses every core; with two, each gets half (the stage splits them). Wall time includes
starting the workers. Needs data/prepared (`dvc repro prepare-split`). Prints JSON.

    python bench/parallel_speedup.py [--workers 1 2] [--n-trials 6] [--epochs 3]
"""

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
from stage_runner import demo_params, run_hpo_search, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n-trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    space = {
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [16]},
    }
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n_workers in args.workers:
            params = demo_params(
                n_workers=n_workers,
                n_trials=args.n_trials,
                num_epochs=args.epochs,
                early_stopping_patience=args.epochs,
                pruner="none",
                search_space=space,
            )
            workdir = Path(tmp) / f"w{n_workers}"
            _, seconds = run_hpo_search(workdir, params)
            table = trials(workdir, params)
            assert len(table) == args.n_trials and (table["state"] == "COMPLETE").all()
            # From the first trial's start to the last one's end: the stage minus its start-up.
            span = (
                pd.to_datetime(table["datetime_complete"]).max()
                - pd.to_datetime(table["datetime_start"]).min()
            ).total_seconds()
            runs[str(n_workers)] = {
                "seconds": round(seconds, 1),
                "trials_per_hour": round(args.n_trials / seconds * 3600, 1),
                "trial_span_seconds": round(span, 1),
                "trials_per_hour_excluding_startup": round(args.n_trials / span * 3600, 1),
                "workers_seen": table["worker"].nunique(),
            }
    base = runs[str(args.workers[0])]["trials_per_hour"]
    base_span = runs[str(args.workers[0])]["trials_per_hour_excluding_startup"]
    print(
        json.dumps(
            {
                "benchmark": "trials per hour vs local workers (CPU)",
                "n_trials": args.n_trials,
                "epochs_per_trial": args.epochs,
                "runs": runs,
                "speedup": {k: round(v["trials_per_hour"] / base, 2) for k, v in runs.items()},
                "speedup_excluding_startup": {
                    k: round(v["trials_per_hour_excluding_startup"] / base_span, 2)
                    for k, v in runs.items()
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Samplers for small budgets: the best value the demo search has found after 8, 16 and 24
trials with TPE, GP and random sampling, over seeds.

Each arm is the demo's search with `hpo.sampler` set and the given pruning settings (the same
for every sampler); the seed drives the sampler and training. Best values are the best completed
trial's objective among the first k trials. Runs are kept in --cache and shared with
pruning_savings.py (see search_arms.py). Needs `dvc repro prepare-split`. Prints JSON.

    python bench/sampler_comparison.py --seeds 42 43 44 --n-trials 24 \\
        --pruning pruner=median,prune_on=loss
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from search_arms import parse_arm, run_arm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "gp", "random"])
    parser.add_argument("--pruning", default="pruner=median", help="hpo overrides, every arm")
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    args = parser.parse_args()

    pruning = parse_arm(args.pruning)
    table = {}
    for sampler in args.samplers:
        overrides = {**pruning, **({"sampler": sampler} if sampler != "tpe" else {})}
        runs = {s: run_arm(args.cache, s, args.n_trials, overrides) for s in args.seeds}
        for seed, run in runs.items():
            shown = {"best_after": run["best_after"], "epochs_run": run["epochs_run"]}
            print(json.dumps({"sampler": sampler, "seed": seed, **shown}), file=sys.stderr)
        after = {}
        for k in runs[args.seeds[0]]["best_after"]:
            values = [r["best_after"][k] for r in runs.values() if r["best_after"][k] is not None]
            after[k] = {
                "mean": round(statistics.mean(values), 2) if values else None,
                "range": [min(values), max(values)] if values else None,
                "per_seed": {s: r["best_after"][k] for s, r in runs.items()},
            }
        epochs = sum(r["epochs_run"] for r in runs.values())
        table[sampler] = {"best_after_trials": after, "epochs_run": epochs}
    print(json.dumps({"pruning": pruning, "n_trials": args.n_trials, "samplers": table}, indent=2))


if __name__ == "__main__":
    main()

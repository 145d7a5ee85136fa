"""Pruning savings: epochs run by the demo search with each pruning setting vs with none.

Every arm is the demo's search (params.yaml: 12 epochs per trial, early stopping after 3 epochs
without improvement, the demo search space, its prepared data) with hpo overrides; the baseline
is `pruner=none` (early stopping only). Each seed runs every arm once with that seed (sampler and
training). Savings are epochs summed over the seeds; best values are the best completed trial's
objective (what best_params.json reports), averaged over the seeds, with the worst seed's gap.
Targets (issue 13): >= 50 % fewer epochs, mean best within 1 point, no seed worse by more than 3.
Needs `dvc repro prepare-split` (data/prepared) and the demo backbone. Prints JSON. Runs are kept
in --cache (see search_arms.py): a rerun, or another benchmark, reuses them.

    python bench/pruning_savings.py --seeds 42 43 44 --n-trials 24 \\
        --arms pruner=median pruner=median,prune_on=loss,pruner_warmup_epochs=1
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from search_arms import arm_label, parse_arm, run_arm

TARGETS = {"fewer_epochs_percent": 50, "mean_gap_points": 1, "worst_seed_gap_points": 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["pruner=median"], help="hpo overrides")
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"), help="kept runs")
    args = parser.parse_args()

    arms = {arm_label(parse_arm(a)): parse_arm(a) for a in ["pruner=none", *args.arms]}
    runs: dict[str, dict[int, dict]] = {label: {} for label in arms}
    for seed in args.seeds:
        for label, overrides in arms.items():
            runs[label][seed] = run = run_arm(args.cache, seed, args.n_trials, overrides)
            shown = {k: run[k] for k in ("epochs_run", "pruned", "best_value", "seconds")}
            print(json.dumps({"seed": seed, "arm": label, **shown}), file=sys.stderr)

    base = runs["pruner=none"]
    summary = {}
    for label in list(arms)[1:]:
        epochs = sum(r["epochs_run"] for r in runs[label].values())
        base_epochs = sum(r["epochs_run"] for r in base.values())
        gaps = {s: round(base[s]["best_value"] - runs[label][s]["best_value"], 2) for s in base}
        fewer = round(100 * (1 - epochs / base_epochs), 1)
        mean_gap = round(statistics.mean(gaps.values()), 2)
        summary[label] = {
            "epochs_run": epochs,
            "baseline_epochs_run": base_epochs,
            "fewer_epochs_percent": fewer,
            "mean_best": round(statistics.mean(r["best_value"] for r in runs[label].values()), 2),
            "baseline_mean_best": round(statistics.mean(r["best_value"] for r in base.values()), 2),
            "mean_gap_points": mean_gap,  # > 0: the pruned search found worse
            "per_seed_gap_points": gaps,
            "meets_targets": fewer >= TARGETS["fewer_epochs_percent"]
            and mean_gap <= TARGETS["mean_gap_points"]
            and max(gaps.values()) <= TARGETS["worst_seed_gap_points"],
        }
    per_seed = {
        label: {s: {k: r[k] for k in ("epochs_run", "pruned", "best_value", "seconds")}
                for s, r in by_seed.items()}
        for label, by_seed in runs.items()
    }  # fmt: skip
    print(json.dumps({"n_trials": args.n_trials, "targets": TARGETS, "runs": per_seed,
                      "savings": summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

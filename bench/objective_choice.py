"""Which trial each hpo.metric would pick, read from unpruned demo searches (no new training).

For every seed it reads the unpruned 24-trial search that pruning_savings.py keeps (run that
first; see search_arms.py): each trial's per-epoch validation history. Per objective: the
trial and epoch with the highest value, and that epoch's other metrics. Per trial (at the epoch
accuracy picks, as the search did): the rank agreement of accuracy with each other metric, and
the trials that collapsed to one grade (kappa 0) with the trials that learned something (kappa
> 0) that accuracy ranks below them. Prints JSON.

    python bench/objective_choice.py --seeds 43 44 --cache .bench_cache
"""

import argparse
import json
from pathlib import Path

from scipy.stats import spearmanr
from search_arms import study_histories

METRICS = ("accuracy", "kappa", "auroc", "f1", "retfound")
ARM = {"pruner": "none"}


def choices(trials: list[dict]) -> dict[str, dict]:
    """Per objective: the (trial, epoch) with its highest value, and that epoch's metrics."""
    epochs = [(t["number"], h) for t in trials for h in t["history"]]
    out = {}
    for metric in METRICS:
        number, best = max(epochs, key=lambda e: e[1][f"val_{metric}"])  # first of ties
        out[metric] = {
            "trial": number,
            "epoch": best["epoch"],
            **{m: round(best[f"val_{m}"], 4) for m in METRICS},
        }
    return out


def trial_level(trials: list[dict]) -> dict:
    """Each trial at its best-accuracy epoch: rank agreement and one-grade collapses."""
    best = {
        t["number"]: max(t["history"], key=lambda h: h["val_accuracy"])
        for t in trials
        if t["state"] == "COMPLETE" and t["history"]
    }
    acc = [h["val_accuracy"] for h in best.values()]
    spearman = {
        m: round(float(spearmanr(acc, [h[f"val_{m}"] for h in best.values()])[0]), 2)
        for m in METRICS[1:]
    }
    collapsed = []
    for number, h in best.items():
        if h["val_kappa"] != 0:
            continue
        below = [
            {"trial": n, "accuracy": round(o["val_accuracy"], 2), "kappa": round(o["val_kappa"], 3),
             "auroc": round(o["val_auroc"], 3)}
            for n, o in best.items()
            if o["val_kappa"] > 0 and o["val_accuracy"] < h["val_accuracy"]
        ]  # fmt: skip
        collapsed.append(
            {"trial": number, "accuracy": round(h["val_accuracy"], 2),
             "auroc": round(h["val_auroc"], 3), "ranked_above": below}
        )  # fmt: skip
    return {"spearman_with_accuracy": spearman, "one_grade_trials": collapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[43, 44])
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    args = parser.parse_args()
    report = {}
    for seed in args.seeds:
        trials = study_histories(args.cache, seed, args.n_trials, ARM)
        report[seed] = {"picked": choices(trials), **trial_level(trials)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""How early each per-epoch validation signal ranks the demo's trials, from unpruned searches.

A pruner can only be as good as the signal it compares: at epoch k it stops trials whose value
is below the others'. For every trial of the kept unpruned runs (pruner=none, see
pruning_savings.py and search_arms.py), this compares each signal at epoch k with the trial's
final objective (its best validation hpo.metric over all its epochs): Spearman's rank
correlation over the trials that reached epoch k, and whether the eventual best trial of the
search sat in the top half at epoch k (what a median pruner needs to keep it). Signals: every
validation metric, the class-balanced validation loss (negated), and the best-so-far objective.
Prints JSON. Run pruning_savings.py first (or give the same --cache, --seeds and --n-trials).

    python bench/pruning_signals.py --seeds 42 43 44 --n-trials 24
"""

import argparse
import json
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import spearmanr
from search_arms import run_arm, study_histories
from stage_runner import REPO

SIGNALS = ("accuracy", "kappa", "auroc", "f1", "loss", "best_objective")


def signal_at(history: list[dict], epoch: int, name: str, metric: str) -> float | None:
    rows = [r for r in history if r["epoch"] <= epoch]
    if len(rows) < epoch:
        return None  # the trial stopped earlier (early stopping)
    if name == "best_objective":
        return max(r[f"val_{metric}"] for r in rows)
    value = rows[-1][f"val_{name}"]
    return -value if name == "loss" else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    args = parser.parse_args()
    metric = yaml.safe_load((REPO / "params.yaml").read_text())["hpo"]["metric"]

    table: dict[str, dict[int, dict]] = {name: {} for name in SIGNALS}
    searches = []
    for seed in args.seeds:
        run_arm(args.cache, seed, args.n_trials, {"pruner": "none"})  # read back, or run
        trials = [t for t in study_histories(args.cache, seed, args.n_trials, {"pruner": "none"})
                  if t["state"] == "COMPLETE" and t["history"]]  # fmt: skip
        final = {t["number"]: max(r[f"val_{metric}"] for r in t["history"]) for t in trials}
        searches.append((trials, final, max(final, key=final.get)))
    for name in SIGNALS:
        for epoch in args.epochs:
            rhos, kept_best = [], []
            for trials, final, best in searches:
                at = {t["number"]: signal_at(t["history"], epoch, name, metric) for t in trials}
                at = {n: v for n, v in at.items() if v is not None}
                if len(at) >= 4:
                    rhos.append(spearmanr([at[n] for n in at], [final[n] for n in at])[0])
                if best in at:
                    kept_best.append(at[best] >= np.median(list(at.values())))
            table[name][epoch] = {
                "spearman_mean": round(float(np.mean(rhos)), 3) if rhos else None,
                "best_trial_in_top_half": f"{sum(kept_best)}/{len(kept_best)}",
            }
    print(json.dumps({"metric": metric, "seeds": args.seeds, "signals": table}, indent=2))


if __name__ == "__main__":
    main()

"""Pruning savings: epochs run by the demo search with its pruner vs with none.

Both searches are the demo's (params.yaml: trials, epochs, early stopping, search space) on its
prepared data; only hpo.pruner differs. Each seed in --seeds runs every search once with that
seed (sampler and training); the savings are summed and the best values averaged over the
seeds, since one 226-image validation split moves a best value by a point or two from seed to
seed. Targets: >= 40 % fewer epochs with the pruner, best value within 2 points of the unpruned
search's. Needs `dvc repro prepare-split` (data/prepared) and the demo backbone. Prints JSON.

    python bench/pruning_savings.py [--pruners median hyperband] [--n-trials 24]
        [--seeds 42 43 44] [--warmup-epochs 2] [--baseline earlier.json ...] [--keep DIR]

--baseline takes unpruned runs (same seed and trial count) from earlier outputs of this script
instead of running them again: they are the slow ones and do not depend on pruner settings. An
output from before --seeds holds one seed's runs, made with params.yaml's seed. --keep DIR keeps
each search's folder (its study.db and trials.csv, for the learning curves) under DIR.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from stage_runner import demo_params, run_hpo_search, trials


def unpruned_runs(paths: list[Path], default_seed: int) -> dict[int, dict]:
    """Earlier unpruned runs by seed."""
    runs = {}
    for path in paths:
        earlier = json.loads(path.read_text())
        by_seed = earlier.get("seeds") or {default_seed: earlier["runs"]}
        runs.update({int(seed): r["none"] for seed, r in by_seed.items() if "none" in r})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruners", nargs="+", default=["median"])
    parser.add_argument("--n-trials", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: params.yaml's")
    parser.add_argument("--warmup-epochs", type=int, default=None, help="hpo.pruner_warmup_epochs")
    parser.add_argument("--baseline", type=Path, nargs="+", default=[], help="earlier JSON outputs")
    parser.add_argument("--keep", type=Path, default=None, help="keep the searches' folders here")
    args = parser.parse_args()

    overrides = {"n_trials": args.n_trials, "pruner_warmup_epochs": args.warmup_epochs}
    base = demo_params(**{k: v for k, v in overrides.items() if v is not None})
    seeds = args.seeds or [base["seed"]]
    earlier = unpruned_runs(args.baseline, base["seed"])

    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for seed in seeds:
            results[seed] = {}
            if seed in earlier and earlier[seed]["trials"] == base["hpo"]["n_trials"]:
                results[seed]["none"] = earlier[seed]
            for pruner in [p for p in ["none", *args.pruners] if p not in results[seed]]:
                params = {**base, "seed": seed, "hpo": {**base["hpo"], "pruner": pruner}}
                workdir = root / f"{seed}-{pruner}"
                if workdir.exists():  # hpo-search would resume the study found there
                    raise SystemExit(f"{workdir} exists: --keep needs a new folder")
                _, seconds = run_hpo_search(workdir, params)
                table = trials(workdir, params)
                results[seed][pruner] = {
                    "trials": len(table),
                    "pruned": int((table["state"] == "PRUNED").sum()),
                    "epochs_run": int(table["epochs_run"].sum()),
                    "epoch_budget": len(table) * params["hpo"]["num_epochs"],
                    "best_value": round(float(table["objective"].max()), 2),
                    "seconds": round(seconds, 1),
                }
                print(json.dumps({"seed": seed, pruner: results[seed][pruner]}), file=sys.stderr)

    def total_epochs(pruner: str) -> int:
        return sum(results[s][pruner]["epochs_run"] for s in seeds)

    def mean_best(pruner: str) -> float:
        return statistics.mean(results[s][pruner]["best_value"] for s in seeds)

    savings = {}
    for pruner in args.pruners:
        saved = 100 * (1 - total_epochs(pruner) / total_epochs("none"))
        gap = mean_best("none") - mean_best(pruner)
        savings[pruner] = {
            "fewer_epochs_percent": round(saved, 1),
            "best_value_gap_points": round(gap, 2),  # mean over seeds; > 0: pruned search worse
            "per_seed_gap_points": {
                s: round(results[s]["none"]["best_value"] - results[s][pruner]["best_value"], 2)
                for s in seeds
            },
            "meets_target": saved >= 40 and gap <= 2,
        }
    print(
        json.dumps(
            {
                "benchmark": "epochs run with and without pruning (early stopping on in both)",
                "metric": base["hpo"]["metric"],
                "pruner_warmup_epochs": base["hpo"]["pruner_warmup_epochs"],
                "seeds": results,
                "savings": savings,
                "targets": {"fewer_epochs_percent": ">= 40", "best_value_gap_points": "<= 2"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Pruning savings: epochs run by the demo search with its pruner vs with none.

Both searches are the demo's (params.yaml: same seed, trials, epochs, early stopping, search
space) on its prepared data; only hpo.pruner differs. Targets: >= 40 % fewer epochs with the
pruner, best value within 2 points of the unpruned search's. Needs `dvc repro prepare-split`
(data/prepared) and the demo backbone. Prints JSON.

    python bench/pruning_savings.py [--pruners median hyperband] [--n-trials 24]
"""

import argparse
import json
import tempfile
from pathlib import Path

from stage_runner import demo_params, run_hpo_search, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruners", nargs="+", default=["median"])
    parser.add_argument("--n-trials", type=int, default=None, help="default: params.yaml's")
    args = parser.parse_args()

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in ["none", *args.pruners]:
            overrides = {"pruner": pruner}
            if args.n_trials:
                overrides["n_trials"] = args.n_trials
            params = demo_params(**overrides)
            workdir = Path(tmp) / pruner
            _, seconds = run_hpo_search(workdir, params)
            table = trials(workdir, params)
            runs[pruner] = {
                "trials": len(table),
                "pruned": int((table["state"] == "PRUNED").sum()),
                "epochs_run": int(table["epochs_run"].sum()),
                "epoch_budget": len(table) * params["hpo"]["num_epochs"],
                "best_value": round(float(table["objective"].max()), 2),
                "seconds": round(seconds, 1),
            }
    full = runs["none"]
    savings = {}
    for pruner in args.pruners:
        saved = 100 * (1 - runs[pruner]["epochs_run"] / full["epochs_run"])
        gap = full["best_value"] - runs[pruner]["best_value"]
        savings[pruner] = {
            "fewer_epochs_percent": round(saved, 1),
            "best_value_gap_points": round(gap, 2),
            "meets_target": saved >= 40 and gap <= 2,
        }
    print(
        json.dumps(
            {
                "benchmark": "epochs run with and without pruning (early stopping on in both)",
                "metric": params["hpo"]["metric"],
                "runs": runs,
                "savings": savings,
                "targets": {"fewer_epochs_percent": ">= 40", "best_value_gap_points": "<= 2"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

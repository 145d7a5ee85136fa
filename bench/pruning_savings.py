"""Pruning savings: epochs run by the demo search with its pruner vs with none.

Both searches are the demo's (params.yaml: same seed, trials, epochs, early stopping, search
space) on its prepared data; only hpo.pruner differs. Targets: >= 40 % fewer epochs with the
pruner, best value within 2 points of the unpruned search's. Needs `dvc repro prepare-split`
(data/prepared) and the demo backbone. Prints JSON.

    python bench/pruning_savings.py [--pruners median hyperband] [--n-trials 24]
        [--warmup-epochs 1] [--baseline earlier.json]

--baseline takes the unpruned run from an earlier output of this script with the same trial
count, instead of running it again (it is the slow one and does not depend on pruner settings).
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
    parser.add_argument("--warmup-epochs", type=int, default=None, help="hpo.pruner_warmup_epochs")
    parser.add_argument("--baseline", type=Path, default=None, help="earlier JSON output")
    args = parser.parse_args()

    runs = {}
    if args.baseline:
        runs["none"] = json.loads(args.baseline.read_text())["runs"]["none"]
        if args.n_trials and runs["none"]["trials"] != args.n_trials:
            raise SystemExit(f"{args.baseline}: its unpruned run has another trial count")
    with tempfile.TemporaryDirectory() as tmp:
        for pruner in [p for p in ["none", *args.pruners] if p not in runs]:
            overrides = {"pruner": pruner}
            if args.n_trials:
                overrides["n_trials"] = args.n_trials
            if args.warmup_epochs is not None:
                overrides["pruner_warmup_epochs"] = args.warmup_epochs
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
                "pruner_warmup_epochs": params["hpo"]["pruner_warmup_epochs"],
                "runs": runs,
                "savings": savings,
                "targets": {"fewer_epochs_percent": ">= 40", "best_value_gap_points": "<= 2"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Stage train-best: train the best trial's hyperparameters; save the model and its history."""

from pathlib import Path

import pandas as pd

from retfound_hpo.best_model import train_best_model
from retfound_hpo.cli import run_stage
from retfound_hpo.config import load_params
from retfound_hpo.io import write_json_atomic, write_text_atomic
from retfound_hpo.train import load_cached


def main() -> None:
    params = load_params("params.yaml")
    prepared, results = Path(params.data.prepared_dir), Path(params.train_best.results_dir)
    train, val = load_cached(prepared / "train"), load_cached(prepared / "val")
    result = train_best_model(params, train, val)
    write_text_atomic(results / "history.csv", pd.DataFrame(result.history).to_csv(index=False))
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        **{f"val_{k}": v for k, v in result.best_metrics.items()},
    }
    write_json_atomic(results / "metrics.json", metrics)


if __name__ == "__main__":
    run_stage(main)

"""Stage train-best: train the best trial's hyperparameters once per seed; save the models (the
seed best on val delivered as models/best_model), the delivered seed's history and every seed's
validation metrics."""

from pathlib import Path

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.files import write_json_atomic, write_text_atomic
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.training.best_model import read_best_hparams, train_best_models
from retfound_hpo.training.inputs import load_cached


def main() -> None:
    params = load_params("params.yaml")
    prepared, results = Path(params.data.prepared_dir), Path(params.train_best.results_dir)
    best = params.hpo.study_dir / "best_params.json"
    hparams = read_best_hparams(best, params.model, params.train)
    train, val = load_cached(prepared / "train"), load_cached(prepared / "val")
    runs = train_best_models(
        params.train_best,
        params.model,
        params.train,
        hparams,
        seed=params.seed,
        metric=params.hpo.metric,
        train=train,
        val=val,
    )
    write_text_atomic(results / "history.csv", runs.history().to_csv(index=False))
    write_json_atomic(results / "metrics.json", runs.metrics())


if __name__ == "__main__":
    run_stage(main)

"""Stage evaluate-cross-dataset: the trained model on val (where the referable-DR operating point
is chosen), the held-out test split and other datasets; each seed's model when there are several.
"""

from pathlib import Path

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.files import write_json_atomic, write_text_atomic
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.evaluation.evaluate import evaluate_datasets
from retfound_hpo.evaluation.seed_summary import find_seed_models
from retfound_hpo.evaluation.summary import summary_markdown
from retfound_hpo.model.saved import load_trained_model


def main() -> None:
    params = load_params("params.yaml")
    prepared, out = Path(params.data.prepared_dir), Path(params.evaluate.output_dir)
    model, _ = load_trained_model(params.train_best.output_dir)
    datasets = {
        "val": prepared / "val",
        "test": prepared / "test",
        **{ds.name: prepared / ds.name for ds in params.evaluate.datasets},
    }
    metrics = evaluate_datasets(
        model,
        datasets,
        out,
        params.evaluate,
        seed=params.seed,
        device=params.train.device,
        amp=params.train.amp,
        batch_size=params.train.eval_batch_size,
        seed_models=find_seed_models(params.train_best.seeds_dir),
    )
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "summary.md", summary_markdown(metrics))


if __name__ == "__main__":
    run_stage(main)

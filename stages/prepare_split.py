"""Stage prepare-split: demo data (if enabled), patient-level split, preprocessed image caches."""

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.files import write_json_atomic
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.data.prepare import prepare_split

SUMMARY = "results/data/summary.json"


def main() -> None:
    params = load_params("params.yaml")
    summary = prepare_split(
        params.data,
        params.evaluate.datasets,
        input_size=params.model.input_size,
        num_classes=params.model.num_classes,
        seed=params.seed,
    )
    write_json_atomic(SUMMARY, summary)


if __name__ == "__main__":
    run_stage(main)

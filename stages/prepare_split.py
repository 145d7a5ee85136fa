"""Stage prepare-split: demo data (if enabled), patient-level split, preprocessed image caches."""

from retfound_hpo.cli import run_stage
from retfound_hpo.config import load_params
from retfound_hpo.data.prepare import prepare_split
from retfound_hpo.io import write_json_atomic

SUMMARY = "results/data/summary.json"


def main() -> None:
    params = load_params("params.yaml")
    summary = prepare_split(params)
    write_json_atomic(SUMMARY, summary)


if __name__ == "__main__":
    run_stage(main)

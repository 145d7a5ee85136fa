"""Stage export-report: summary_report.md and plots, read from the study's local snapshot."""

import optuna

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.reporting.report import write_report


def main() -> None:
    hpo = load_params("params.yaml").hpo
    study = optuna.load_study(study_name=hpo.study_name, storage=hpo.snapshot_url)
    path = write_report(
        study,
        hpo.study_dir,
        hpo.search_space,
        objective_name=hpo.objective_column,
        num_epochs=hpo.num_epochs,
        storage_url=hpo.snapshot_url,
        metric=hpo.metric,
    )
    print(f"report: {path}")


if __name__ == "__main__":
    run_stage(main)

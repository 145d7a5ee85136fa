"""Stage export-report: summary_report.md and plots, read from the study storage."""

import optuna

from retfound_hpo.cli import run_stage
from retfound_hpo.config import load_params
from retfound_hpo.report import write_report
from retfound_hpo.search import objective_column
from retfound_hpo.study import snapshot_url


def main() -> None:
    params = load_params("params.yaml")
    hpo = params.hpo
    study = optuna.load_study(study_name=hpo.study_name, storage=snapshot_url(params))
    path = write_report(
        study,
        hpo.study_dir,
        hpo.search_space,
        objective_name=objective_column(hpo.metric),
        num_epochs=hpo.num_epochs,
        storage_url=snapshot_url(params),
    )
    print(f"report: {path}")


if __name__ == "__main__":
    run_stage(main)

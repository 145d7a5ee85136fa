"""Stage hpo-search: run (or resume) the Optuna study and write the guide's output files."""

import dataclasses
import sys
from pathlib import Path

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.search.study_files import write_search_outputs
from retfound_hpo.search.workers import run_search
from retfound_hpo.training.inputs import load_cached

INTERRUPTED = (
    "interrupted: a trial cut off is recorded FAIL and not counted; dvc repro resumes the study"
)


def main() -> None:
    params = load_params("params.yaml")
    prepared = Path(params.data.prepared_dir)
    try:
        train, val = load_cached(prepared / "train"), load_cached(prepared / "val")  # never test
        study, interrupted = run_search(params, train, val)
        # Also after Ctrl-C: keep what completed.
        best = write_search_outputs(study, params.hpo, dataclasses.asdict(params))
    except KeyboardInterrupt:  # Ctrl-C before or after the trials: nothing half-written
        interrupted = True
    if interrupted:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    if best is None:
        sys.exit(f"no trial completed; see {params.hpo.study_dir / 'trials.csv'}")
    print(f"best trial {best['best_trial']}: {best}")


if __name__ == "__main__":
    run_stage(main)

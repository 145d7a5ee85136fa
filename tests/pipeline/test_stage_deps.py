"""In a clone where `dvc repro` has finished, a code change reruns only the stages that run it:
`dvc status` after appending a comment to one module."""

import json

import pytest

from conftest import run_cmd, sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # may build the shared demo pipeline

EDITS = {
    # a module only export-report runs
    "src/retfound_hpo/reporting/plots.py": {"export-report"},
    # modules only evaluate-cross-dataset runs
    "src/retfound_hpo/evaluation/figures.py": {"evaluate-cross-dataset"},
    "src/retfound_hpo/metrics/bootstrap.py": {"evaluate-cross-dataset"},
    # train-best's own work
    "src/retfound_hpo/training/best_model.py": {"train-best"},
    # the fit loop: every stage that trains, never prepare-split (nor the report)
    "src/retfound_hpo/training/loop.py": {"hpo-search", "train-best"},
    # prediction: the search's validation, train-best's and the evaluation
    "src/retfound_hpo/training/inference.py": {
        "hpo-search",
        "train-best",
        "evaluate-cross-dataset",
    },
    "src/retfound_hpo/data/demo/render.py": {"prepare-split"},
}


@pytest.mark.parametrize(("module", "stages"), list(EDITS.items()))
def test_a_code_change_reruns_only_the_stages_that_run_it(demo_pipeline, module, stages):
    repo = demo_pipeline.repo
    path = repo / module
    original = path.read_bytes()
    assert json.loads(sh("dvc status --json", repo)) == {}  # everything up to date first
    try:
        path.write_bytes(original + b"\n# an edit that changes nothing\n")
        changed = set(json.loads(sh("dvc status --json", repo)))
    finally:
        path.write_bytes(original)
    assert changed == stages


def test_an_unknown_key_stops_a_repro_that_would_rerun_nothing(demo_pipeline):
    """A misspelt top-level key changes no stage's params: DVC alone would say "up to date".
    The check-params stage reads the whole file whenever it changes, and stops in one line."""
    repo = demo_pipeline.repo
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original + "hpo_n_trials: 20  # meant hpo.n_trials\n")
        proc = run_cmd("dvc repro", repo)
        ran = [line for line in proc.stdout.splitlines() if line.startswith("Running stage")]
    finally:
        params.write_text(original)
    assert proc.returncode != 0
    assert ran == ["Running stage 'check-params':"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: hpo_n_trials: unknown key; allowed keys here: data, evaluate, hpo, model, seed, "
        "train, train_best, wandb"
    ]
    assert "Traceback" not in proc.stderr

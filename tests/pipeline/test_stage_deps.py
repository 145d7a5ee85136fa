"""In a clone where `dvc repro` has finished, a code change reruns only the stages that run it:
`dvc status` after appending a comment to one module."""

import json

import pytest

from conftest import sh

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

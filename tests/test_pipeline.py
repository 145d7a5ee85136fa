"""End to end: `dvc repro` of all five stages on tiny params, in a temporary copy of the repo."""

import json

import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, copy_repo, sh

TINY = {
    "data": {
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        "demo": {"n_domain_a": 100, "n_domain_b": 20},
    },
    "hpo": {"n_trials": 2, "num_epochs": 2, "sampler_startup_trials": 2},
    "train_best": {"epochs": 2},
}


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def repo(tmp_path):
    copy_repo(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merge(params, TINY), sort_keys=False))
    sh("git init -q && git add -A && git commit -qm init", tmp_path)
    return tmp_path


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_and_resumes(repo):
    sh("dvc repro", repo)
    study = repo / "results/optuna/retfound_lora_search"
    trials = pd.read_csv(study / "trials.csv")
    assert len(trials) == 2 and set(trials["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    best = json.loads((study / "best_params.json").read_text())
    assert {
        "lora_r",
        "lora_alpha",
        "learning_rate",
        "batch_size",
        "dropout",
        "best_value",
        "best_trial",
    } == set(best)
    json.loads((study / "config.json").read_text())
    assert (study / "study.pkl").stat().st_size > 0
    assert "## Top 2 completed trials" in (study / "summary_report.md").read_text()
    for plot in ("optimization_history", "param_importance", "parallel_coordinate", "slice_plots"):
        Image.open(study / "plots" / f"{plot}.png").verify()
        assert (study / "plots" / f"{plot}.html").stat().st_size > 0
    assert (repo / "models/best_model/adapter_model.safetensors").is_file()
    assert len(pd.read_csv(repo / "results/train/history.csv")) >= 1
    metrics = json.loads((repo / "results/eval/metrics.json").read_text())
    assert set(metrics) == {"val", "test", "domain_b"}  # val: where the operating point is set
    assert {"accuracy", "kappa", "auroc", "f1"} <= set(metrics["test"])
    for name in metrics:
        preds = pd.read_csv(repo / f"results/eval/datasets/{name}/predictions.csv")
        assert len(preds) == metrics[name]["n_images"]
        Image.open(repo / f"results/eval/datasets/{name}/confusion_matrix.png").verify()
    summary = json.loads((repo / "results/data/summary.json").read_text())
    assert summary["train"]["images"] + summary["val"]["images"] + summary["test"]["images"] == 100

    assert "up to date" in sh("dvc status", repo)  # a second repro would run nothing

    sh("git add -A && git commit -qm run", repo)
    sh("dvc exp run -S hpo.n_trials=3", repo)
    resumed = pd.read_csv(study / "trials.csv")
    assert len(resumed) == 3
    cols = ["trial_number", "lora_r", "learning_rate", "best_val_acc"]
    pd.testing.assert_frame_equal(resumed[cols].iloc[:2], trials[cols])
    shown = json.loads(sh("dvc exp show --json", repo))
    assert "results/eval/metrics.json" in json.dumps(shown)
    diff = json.loads(sh("dvc metrics diff --all --json", repo))["results/eval/metrics.json"]
    assert {"test.kappa", "domain_b.kappa", "domain_b.kappa_ci_low"} <= set(diff)

    # Two variants of the trained model differ dataset by dataset in `dvc metrics diff`.
    sh("git add -A && git commit -qm resumed", repo)
    sh("dvc exp run -n short -S train_best.epochs=1", repo)
    sh("dvc exp run -n long -S train_best.epochs=3", repo)
    diff = json.loads(sh("dvc metrics diff short long --json", repo))["results/eval/metrics.json"]
    for dataset in ("test", "domain_b"):
        assert diff[f"{dataset}.auroc"]["diff"] != 0, diff

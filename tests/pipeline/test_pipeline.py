"""End to end: `dvc repro` of all five stages on tiny params, in a temporary copy of the repo
(the session's shared demo_pipeline), then resumed and varied with `dvc exp run`."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import sh
from retfound_hpo.data.prepared import load_prepared
from retfound_hpo.model.saved import load_trained_model
from retfound_hpo.training.inference import predict_proba

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
]  # the shared demo pipeline runs in the first


def test_dvc_repro_runs_every_stage(demo_pipeline):
    repo = demo_pipeline.first
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
    assert best["best_trial"] in set(trials["trial_number"])
    config = json.loads((study / "config.json").read_text())
    assert config["hpo"]["n_trials"] == 2 and config["data"]["demo"]["n_domain_a"] == 100
    with open(study / "study.pkl", "rb") as f:  # self-contained: no database needed
        pickled = pickle.load(f)
    assert [t.number for t in pickled.trials] == trials["trial_number"].tolist()
    assert [t.state.name for t in pickled.trials] == trials["state"].tolist()
    assert "## Top 2 completed trials" in (study / "summary_report.md").read_text()
    for plot in ("optimization_history", "param_importance", "parallel_coordinate", "slice_plots"):
        Image.open(study / "plots" / f"{plot}.png").verify()
        html = (study / "plots" / f"{plot}.html").read_text()
        assert "Plotly.newPlot" in html and 'src="plotly.min.js"' in html  # offline
    assert (study / "plots/plotly.min.js").stat().st_size > 1_000_000
    assert (repo / "models/best_model/adapter_model.safetensors").is_file()
    history = pd.read_csv(repo / "results/train/history.csv")
    assert 1 <= len(history) <= 2 and history["epoch"].tolist() == list(range(1, len(history) + 1))
    metrics = json.loads((repo / "results/eval/metrics.json").read_text())
    assert set(metrics) == {"val", "test", "domain_b"}  # val: where the operating point is set
    assert {"accuracy", "kappa", "auroc", "f1"} <= set(metrics["test"])
    for name in metrics:
        preds = pd.read_csv(repo / f"results/eval/datasets/{name}/predictions.csv")
        assert len(preds) == metrics[name]["n_images"]
        Image.open(repo / f"results/eval/datasets/{name}/confusion_matrix.png").verify()
    # The delivered model grades the prepared test images as the evaluation recorded.
    model, _ = load_trained_model(repo / "models/best_model")
    images, index = load_prepared(repo / "data/prepared/test")
    probs = predict_proba(model, images, 16)  # (N, 5)
    recorded = pd.read_csv(repo / "results/eval/datasets/test/predictions.csv")
    assert recorded["id"].tolist() == index["id"].tolist()
    np.testing.assert_allclose(probs, recorded[[f"prob_{c}" for c in range(5)]], atol=1e-5)
    summary = json.loads((repo / "results/data/summary.json").read_text())
    assert summary["train"]["images"] + summary["val"]["images"] + summary["test"]["images"] == 100

    assert "up to date" in demo_pipeline.first_status  # a second repro would run nothing


def test_dvc_exp_resumes_the_study_and_variants_differ(demo_pipeline):
    repo = demo_pipeline.repo
    runs = demo_pipeline.experiments()
    trials, resumed = runs["trials_before"], runs["trials_after"]
    assert len(trials) == 2 and len(resumed) == 3
    cols = ["trial_number", "lora_r", "learning_rate", "best_val_acc"]
    pd.testing.assert_frame_equal(resumed[cols].iloc[:2], trials[cols])
    shown = json.loads(sh("dvc exp show --json", repo))
    assert "results/eval/metrics.json" in json.dumps(shown)

    # Two variants of the trained model differ dataset by dataset in `dvc metrics diff`.
    diff = json.loads(sh("dvc metrics diff HEAD long --json", repo))["results/eval/metrics.json"]
    assert {"test.kappa", "domain_b.kappa", "domain_b.kappa_ci_low"} <= set(diff)
    for dataset in ("test", "domain_b"):
        assert diff[f"{dataset}.auroc"]["diff"] != 0, diff

import json
import pickle

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import easy_images, tiny_params
from retfound_hpo.config import ConfigError
from retfound_hpo.search import open_study, run_search, storage_url, write_search_outputs

GUIDE_COLUMNS = [
    "trial_number",
    "lora_r",
    "learning_rate",
    "batch_size",
    "dropout",
    "best_val_acc",
    "state",
    "duration_seconds",
    "datetime_start",
    "datetime_complete",
]


@pytest.fixture
def data():
    return easy_images(60), easy_images(30, seed=1)


def test_search_writes_the_guides_outputs(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint)
    study = run_search(params, *data)
    best = write_search_outputs(study, params)
    out = params.hpo.study_dir
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials.columns[: len(GUIDE_COLUMNS)]) == GUIDE_COLUMNS
    assert {"epochs_run", "val_kappa", "val_auroc", "trainable_params"} <= set(trials.columns)
    assert trials["state"].tolist() == ["COMPLETE", "COMPLETE"]
    saved = json.loads((out / "best_params.json").read_text())
    assert saved == best
    assert set(saved) == {
        "lora_r",
        "learning_rate",
        "batch_size",
        "dropout",
        "best_value",
        "best_trial",
    }
    assert saved["best_value"] == pytest.approx(trials["best_val_acc"].max(), abs=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["hpo"]["n_trials"] == 2 and config["storage"].startswith("sqlite:///")
    (out / "study.db").unlink()  # study.pkl must stand on its own
    restored = pickle.loads((out / "study.pkl").read_bytes())
    assert len(restored.trials) == 2 and restored.best_value == study.best_value


def test_raising_n_trials_continues_the_same_study(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint)
    first = [(t.params, t.value) for t in run_search(params, *data).trials]
    assert len(run_search(params, *data).trials) == 2  # nothing left to do
    more = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 3})
    trials = run_search(more, *data).trials
    assert len(trials) == 3
    assert [(t.params, t.value) for t in trials[:2]] == first
    assert trials[2].params != trials[0].params  # a resumed sampler does not replay trial 0


def test_interrupted_trial_is_failed_on_resume(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint)
    study = open_study(params)
    study.ask()  # a trial left RUNNING, as after kill -9
    reopened = open_study(params)
    (trial,) = reopened.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert len(run_search(params, *data).trials) == 2  # the failed one counts toward n_trials


def test_changed_search_space_needs_a_new_study_name(tmp_path, mae_checkpoint, data):
    run_search(tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 1}), *data)
    changed = tiny_params(tmp_path, mae_checkpoint, hpo={"metric": "kappa"})
    with pytest.raises(ConfigError, match="pick a new hpo.study_name"):
        open_study(changed)


def test_failing_trial_is_recorded_and_search_goes_on(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint, model={"checkpoint": str(tmp_path / "no.pth")})
    study = run_search(params, *data)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert "not found" in study.trials[0].user_attrs["fail_reason"]
    assert write_search_outputs(study, params) is None
    loaded = optuna.load_study(study_name=params.hpo.study_name, storage=storage_url(params))
    assert len(loaded.trials) == 2

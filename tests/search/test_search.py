import contextlib
import json
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from conftest import easy_images, fingerprint_of, run_script, tiny_params, write_outputs
from retfound_hpo.search.budget import counted_trials
from retfound_hpo.search.study import open_study
from retfound_hpo.search.workers import run_search

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
    study, _ = run_search(params, *data)
    best = write_outputs(study, params)
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
    first = [(t.params, t.value) for t in run_search(params, *data)[0].trials]
    assert len(run_search(params, *data)[0].trials) == 2  # nothing left to do
    more = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 3})
    trials = run_search(more, *data)[0].trials
    assert len(trials) == 3
    assert [(t.params, t.value) for t in trials[:2]] == first
    assert trials[2].params != trials[0].params  # a resumed sampler does not replay trial 0


def test_the_same_search_twice_gives_identical_trials(tmp_path, mae_checkpoint, data):
    """Same machine, same threads, same seed: every trial repeats exactly (README's claim)."""
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        study, _ = run_search(tiny_params(tmp_path / name, mae_checkpoint), *data)
        runs.append([(t.params, t.values, t.intermediate_values) for t in study.trials])
    assert runs[0] == runs[1] and len(runs[0]) == 2


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_trial_cut_off_before_its_objective_is_failed_on_resume(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"heartbeat_seconds": 1})
    fingerprint = fingerprint_of(params, *data)
    open_study(
        params.hpo, params.seed, fingerprint
    ).ask()  # left RUNNING with no worker named: a crash
    time.sleep(2.2)  # two heartbeat intervals
    study, _ = run_search(params, *data)
    assert len(study.trials) == 3  # the cut-off one is not counted: two others ran
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    assert [t.number for t in counted_trials(study)] == [1, 2]


def test_out_of_memory_fails_the_trial_fast_and_the_next_one_runs(
    tmp_path, mae_checkpoint, data, monkeypatch
):
    import retfound_hpo.training.hparams as hparams_module

    real_fit, calls = hparams_module.fit, []

    def fit_oom_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first trial's (the first call is the preflight's)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(hparams_module, "fit", fit_oom_first)
    study, _ = run_search(tiny_params(tmp_path, mae_checkpoint), *data)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"].startswith("out of memory at batch_size 16")


def test_ctrl_c_ends_the_trial_and_keeps_what_completed(
    tmp_path, mae_checkpoint, data, monkeypatch
):
    import retfound_hpo.training.hparams as hparams_module

    real_fit = hparams_module.fit

    def fit_then_interrupt(*args, **kwargs):
        if len(search_trials()) == 3:  # the third trial is running
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    params = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 3})

    def search_trials():
        return optuna.load_study(
            study_name=params.hpo.study_name, storage=params.hpo.storage_url
        ).trials

    monkeypatch.setattr(hparams_module, "fit", fit_then_interrupt)
    study, interrupted = run_search(params, *data)
    assert interrupted
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.FAIL,
    ]
    write_outputs(study, params)
    assert len(pd.read_csv(params.hpo.study_dir / "trials.csv")) == 3
    assert (params.hpo.study_dir / "best_params.json").is_file()


@pytest.mark.parametrize(
    ("sampler", "pruner"), [("random", "hyperband"), ("tpe", "successive_halving"), ("tpe", "none")]
)
def test_sampler_and_pruner_choices(tmp_path, mae_checkpoint, data, sampler, pruner):
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"sampler": sampler, "pruner": pruner})
    study, _ = run_search(params, *data)
    assert type(study.sampler).__name__.lower().startswith(sampler)
    expected = {
        "hyperband": "HyperbandPruner",
        "successive_halving": "SuccessiveHalvingPruner",
        "none": "NopPruner",
    }[pruner]
    assert type(study.pruner).__name__ == expected
    assert len(study.trials) == 2


def test_multi_objective_keeps_a_pareto_front(tmp_path, mae_checkpoint, data):
    space = {
        "lora_r": {"type": "categorical", "choices": [4, 32]},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    }
    params = tiny_params(
        tmp_path,
        mae_checkpoint,
        hpo={"multi_objective": True, "search_space": space, "n_trials": 3},
    )
    study, _ = run_search(params, *data)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    for t in study.trials:
        assert t.values[1] == t.user_attrs["trainable_params"]
        assert t.intermediate_values == {}  # no pruning reports in this mode
    best = write_outputs(study, params)
    trials = pd.read_csv(params.hpo.study_dir / "trials.csv")
    assert "objective_trainable_params" in trials.columns
    assert best["best_trial"] in {t.number for t in study.best_trials}


def test_trials_record_hparams_throughput_and_memory(tmp_path, mae_checkpoint, data):
    space = {
        "lora_r": {"type": "categorical", "choices": [4]},
        "lora_targets": {"type": "categorical", "choices": ["qkv,proj,fc1,fc2"]},
        "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
        "layer_decay": {"type": "float", "low": 0.6, "high": 0.9},
        "warmup_epochs": {"type": "int", "low": 1, "high": 1},
    }
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"search_space": space, "n_trials": 1})
    (trial,) = run_search(params, *data)[0].trials
    attrs = trial.user_attrs
    assert attrs["hparams"]["lora_targets"] == "qkv,proj,fc1,fc2"
    # LoRA on all four linear layers of 4 blocks at r=4 (+ head 965 + fc_norm 384)
    per_block = 4 * ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192))
    assert attrs["trainable_params"] == 4 * per_block + 965 + 384
    assert attrs["images_per_second"] > 0 and attrs["peak_memory_mb"] > 0
    write_outputs(run_search(params, *data)[0], params)
    row = pd.read_csv(params.hpo.study_dir / "trials.csv").iloc[0]
    assert row["lora_targets"] == "qkv,proj,fc1,fc2" and row["peak_memory_mb"] > 0


@pytest.mark.slow  # a search process killed for real: the full test command runs it
def test_kill_9_in_the_last_trial_then_resume(tmp_path, mae_checkpoint, data):
    """A search killed with SIGKILL in its last trial keeps its completed trials; the next run
    fails the cut-off trial before counting (it is not counted) and finishes the budget."""
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 2})
    driver = tmp_path / "driver.py"
    driver.write_text(
        DRIVER.format(tests=str(Path(__file__).parents[1]), params=str(tmp_path / "params.yaml"))
    )
    proc = subprocess.Popen(
        [sys.executable, str(driver)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            states = trial_states_read_only(params.hpo.study_dir / "study.db")
            if states == ["COMPLETE", "RUNNING"]:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"driver never reached a running second trial: {states}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = search_trials(params)[0]
    study, _ = run_search(params, *data)
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    assert study.trials[0].value == first.value and study.trials[0].params == first.params
    reason = study.trials[1].user_attrs["fail_reason"]  # its process is gone: failed at once
    assert reason == f"worker {socket.gethostname()}:{proc.pid} died (killed or crashed)"
    assert [t.number for t in counted_trials(study)] == [0, 2]


def trial_states_read_only(db: Path) -> list[str]:
    """Trial states straight from SQLite, read-only: Optuna would create tables and race.

    A RUNNING trial reads RUNNING only once its objective has recorded the worker; before
    that it reads STARTING (killed then, it is failed as interrupted, not as a dead worker)."""
    query = """
        SELECT CASE WHEN t.state = 'RUNNING' AND a.trial_id IS NULL THEN 'STARTING'
                    ELSE t.state END
        FROM trials t LEFT JOIN trial_user_attributes a
            ON a.trial_id = t.trial_id AND a.key = 'worker'
        ORDER BY t.number"""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return [r[0] for r in conn.execute(query)]
    except sqlite3.Error:  # no database or no tables yet
        return []


def search_trials(params):
    return optuna.load_study(
        study_name=params.hpo.study_name, storage=params.hpo.storage_url
    ).trials


DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import easy_images
import retfound_hpo.training.hparams as hparams_module
from retfound_hpo.core.params_yaml import load_params
from retfound_hpo.search.workers import run_search

real_fit, calls = hparams_module.fit, []
def fit_hanging_second(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # the preflight, trial 0, then trial 1
        time.sleep(600)  # killed here
    return real_fit(*args, **kwargs)
hparams_module.fit = fit_hanging_second
run_search(load_params({params!r}), easy_images(60), easy_images(30, seed=1))
"""


def test_diverging_trial_is_pruned_with_its_reason(tmp_path, mae_checkpoint, data, monkeypatch):
    import retfound_hpo.training.hparams as hparams_module
    from retfound_hpo.training.loop import NonFiniteLossError

    def diverge(*args, **kwargs):
        raise NonFiniteLossError("non-finite training loss at epoch 1")

    monkeypatch.setattr(hparams_module, "fit", diverge)
    study, _ = run_search(tiny_params(tmp_path, mae_checkpoint), *data)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert study.trials[0].user_attrs["fail_reason"] == "non-finite training loss at epoch 1"


def test_timeout_stops_starting_new_trials(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 5, "timeout_hours": 1e-6})
    study, _ = run_search(params, *data)
    assert len(study.trials) == 1  # the budget ran out during the first trial


def test_other_metrics_are_the_objective(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"metric": "kappa", "n_trials": 1})
    study, _ = run_search(params, *data)
    (trial,) = study.trials
    assert trial.value == trial.user_attrs["val_kappa"]
    write_outputs(study, params)
    table = pd.read_csv(params.hpo.study_dir / "trials.csv")
    assert table["best_val_kappa"].iloc[0] == pytest.approx(trial.value)


def test_bad_params_stop_the_stage_with_one_line(tmp_path, monkeypatch, capsys):
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "params.yaml").read_text().replace("n_trials: 12", "n_trials: -3")
    (tmp_path / "params.yaml").write_text(text)
    code, stderr = run_script(repo / "stages/hpo_search.py", tmp_path, monkeypatch, capsys)
    assert code == 2
    assert stderr.strip() == "error: hpo.n_trials: -3 is not allowed; must be >= 1"

"""What hpo.n_trials counts: a failure every trial would share stops the search, costs nothing."""

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from conftest import easy_images, tiny_params, write_outputs
from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.search.budget import SearchStopped, counted_trials
from retfound_hpo.search.workers import run_search


@pytest.fixture
def data():
    return easy_images(60), easy_images(30, seed=1)


def failing_fit(monkeypatch, error, trials_failing):
    """hparams_module.fit raising `error` in the given trial calls (call 0 is the preflight's)."""
    import retfound_hpo.training.hparams as hparams_module

    real_fit, calls = hparams_module.fit, []

    def fit(*args, **kwargs):
        calls.append(1)
        if len(calls) - 1 in trials_failing:
            raise error
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(hparams_module, "fit", fit)


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.trials]


def test_a_bad_input_met_inside_a_trial_stops_the_search_uncounted(
    tmp_path, mae_checkpoint, data, monkeypatch
):
    # E.g. the checkpoint went away after the preflight: every later trial would fail too.
    gone = CheckpointError("model.checkpoint: models/RETFound_cfp_weights.pth not found")
    failing_fit(monkeypatch, gone, trials_failing={2})
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 3})
    with pytest.raises(SearchStopped, match=r"trial 1: model.checkpoint: .* not found \(not co"):
        run_search(params, *data)
    monkeypatch.undo()  # fixed
    study, _ = run_search(params, *data)
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert [t.number for t in counted_trials(study)] == [0, 2, 3]
    write_outputs(study, params)
    table = pd.read_csv(params.hpo.study_dir / "trials.csv")
    assert table.loc[1, "fail_reason"].endswith("(not counted toward hpo.n_trials)")


def test_the_same_failure_three_times_in_a_row_stops_and_costs_nothing(
    tmp_path, mae_checkpoint, data, monkeypatch
):
    failing_fit(monkeypatch, RuntimeError("disk full"), trials_failing={1, 2, 3, 4, 5})
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 4})
    with pytest.raises(SearchStopped, match=r"trials \[0, 1, 2\] failed with the same error"):
        run_search(params, *data)
    monkeypatch.undo()
    study, _ = run_search(params, *data)
    assert states(study) == ["FAIL"] * 3 + ["COMPLETE"] * 4


def test_failures_that_differ_or_run_out_of_memory_do_not_stop_the_search(
    tmp_path, mae_checkpoint, data, monkeypatch
):
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    failing_fit(monkeypatch, oom, trials_failing={1, 2, 3})
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 4})
    study, _ = run_search(params, *data)
    assert states(study) == ["FAIL", "FAIL", "FAIL", "COMPLETE"]
    assert len(counted_trials(study)) == 4  # out of memory is the trial's own problem
    assert study.trials[0].state == TrialState.FAIL

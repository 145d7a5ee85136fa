"""A study knows what its trials were made from: other inputs never reuse them."""

import logging

import optuna
import pytest
import torch

from conftest import easy_images, fingerprint_of, tiny_params
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.search.fingerprint import fingerprint_id
from retfound_hpo.search.study import kept_name, make_storage, open_study
from retfound_hpo.search.workers import run_search


@pytest.fixture
def data():
    return easy_images(60), easy_images(30, seed=1)


def fast(tmp_path, checkpoint, **sections):
    hpo = {"n_trials": 1, "num_epochs": 1, **sections.pop("hpo", {})}
    return tiny_params(tmp_path, checkpoint, hpo=hpo, **sections)


def studies(params) -> dict[str, int]:
    """Study name -> number of trials, for every study in the storage."""
    storage = make_storage(params.hpo)
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}


def test_new_data_starts_a_new_study_and_keeps_the_old_one(tmp_path, mae_checkpoint, data, caplog):
    params = fast(tmp_path, mae_checkpoint)
    first = run_search(params, *data)[0].trials
    other_train = easy_images(60, seed=5)
    with caplog.at_level(logging.WARNING, logger="retfound_hpo.search.study"):
        study, _ = run_search(params, other_train, data[1])
    (trial,) = study.trials  # the budget is spent again, on the new data
    assert trial.datetime_start > first[0].datetime_complete
    old_id = fingerprint_id(fingerprint_of(params, *data))
    name = params.hpo.study_name
    assert studies(params) == {name: 1, kept_name(name, old_id): 1}
    assert f"data.train (prepared images)): its 1 trial(s) are kept as study '{name}@" in (
        caplog.text
    )


def test_changing_the_inputs_back_resumes_the_kept_study(tmp_path, mae_checkpoint, data):
    params = fast(tmp_path, mae_checkpoint)
    (first,) = run_search(params, *data)[0].trials
    kappa = fast(tmp_path, mae_checkpoint, hpo={"metric": "kappa"})
    run_search(kappa, *data)
    (again,) = run_search(params, *data)[0].trials  # nothing to run: the kept trial is back
    assert (again.params, again.value) == (first.params, first.value)
    kept = kept_name(params.hpo.study_name, fingerprint_id(fingerprint_of(kappa, *data)))
    assert set(studies(params)) == {params.hpo.study_name, kept}


def test_a_checkpoint_overwritten_in_place_is_new_input(tmp_path, mae_checkpoint, data):
    params = fast(tmp_path, mae_checkpoint)
    run_search(params, *data)
    weights = torch.load(mae_checkpoint, weights_only=True)
    weights["model"]["blocks.0.attn.qkv.weight"] += 0.01  # same file name, other weights
    torch.save(weights, mae_checkpoint)
    study, _ = run_search(params, *data)
    assert len(study.trials) == 1 and len(studies(params)) == 2


def test_a_study_made_before_fingerprints_is_kept_not_reused(tmp_path, mae_checkpoint, data):
    params = fast(tmp_path, mae_checkpoint)
    old = optuna.create_study(study_name=params.hpo.study_name, storage=make_storage(params.hpo))
    old.enqueue_trial({"lora_r": 4})
    old.optimize(lambda t: 50.0 + t.suggest_categorical("lora_r", [4, 8]), n_trials=1)
    study, _ = run_search(params, *data)
    assert len(study.trials) == 1 and study.trials[0].value != 54.0
    assert studies(params)[kept_name(params.hpo.study_name, "unfingerprinted")] == 1


def test_a_worker_with_other_inputs_may_not_join(tmp_path, mae_checkpoint, data):
    params = fast(tmp_path, mae_checkpoint)
    open_study(params.hpo, params.seed, fingerprint_of(params, *data))
    theirs = fingerprint_of(params, data[0], easy_images(30, seed=9))
    with pytest.raises(ConfigError, match=r"other inputs than this worker's \(data.val"):
        open_study(params.hpo, params.seed, theirs, worker_index=1, create=False)
    assert list(studies(params)) == [params.hpo.study_name]  # nothing was moved

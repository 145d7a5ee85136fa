"""W&B: one offline run per trial, grouped by study; a W&B failure never stops the search."""

import pytest

from conftest import easy_images, tiny_params
from retfound_hpo.search.workers import run_search


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path / "wandb"


def test_each_trial_is_an_offline_run_grouped_by_study(tmp_path, mae_checkpoint, offline_wandb):
    params = tiny_params(
        tmp_path, mae_checkpoint, wandb={"enabled": True, "project": "dr-hpo-test"}
    )
    study, _ = run_search(params, easy_images(60), easy_images(30, seed=1))
    runs = sorted(offline_wandb.glob("offline-run-*"))
    assert len(runs) == len(study.trials) == 2
    for run in runs:
        (history,) = run.glob("run-*.wandb")  # the run's own log: config, group, metrics
        data = history.read_bytes()
        assert b"retfound_lora_search" in data  # grouped by study
        assert b"learning_rate" in data and b"val_accuracy" in data  # params, per-epoch metrics


def test_wandb_failure_does_not_stop_the_search(
    tmp_path, mae_checkpoint, offline_wandb, monkeypatch
):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    params = tiny_params(tmp_path, mae_checkpoint, wandb={"enabled": True})
    study, _ = run_search(params, easy_images(60), easy_images(30, seed=1))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]

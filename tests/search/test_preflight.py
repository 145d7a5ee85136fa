"""Mistakes that would fail every trial stop the search before the first one, and cost nothing."""

import logging

import optuna
import pytest
import torch
import yaml

from conftest import REPO, easy_images, run_script, tiny_params, write_prepared
from retfound_hpo.core.errors import CheckpointError, ConfigError
from retfound_hpo.search.preflight import PreflightError, largest_hparams, run_preflight
from retfound_hpo.search.workers import run_search


@pytest.fixture
def data():
    return easy_images(60), easy_images(30, seed=1)


def n_trials_in(params) -> int:
    """Trials in the study's storage; 0 when there is no study (or no database) yet."""
    if not (params.hpo.study_dir / "study.db").exists():
        return 0
    names = optuna.get_all_study_names(params.hpo.storage_url)
    if params.hpo.study_name not in names:
        return 0
    return len(
        optuna.load_study(study_name=params.hpo.study_name, storage=params.hpo.storage_url).trials
    )


def test_largest_configuration_of_the_space(tmp_path):
    space = {
        "lora_r": {
            "type": "categorical",
            "choices": [4, 8],
            "cases": [],
        },
        "lora_alpha": {
            "type": "categorical",
            "choices": [16],
            "cases": [{"when": {"param": "lora_r", "values": [8]}, "choices": [64, 128]}],
        },
        "batch_size": {"type": "int", "low": 8, "high": 48, "step": 8},
        "lora_targets": {"type": "categorical", "choices": ["qkv", "qkv,proj,fc1,fc2", "fc1"]},
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    assert largest_hparams(space) == {
        "lora_r": 8,
        "lora_alpha": 128,
        "batch_size": 48,
        "lora_targets": "qkv,proj,fc1,fc2",
        "learning_rate": 1e-2,
    }


def test_preflight_trains_the_largest_configuration_once(
    tmp_path, mae_checkpoint, data, monkeypatch
):
    import retfound_hpo.training.hparams as hparams_module

    seen = []
    real_fit = hparams_module.fit

    def recording_fit(model, train, val, **kwargs):
        seen.append((len(train), len(val), kwargs["batch_size"], kwargs["epochs"]))
        return real_fit(model, train, val, **kwargs)

    monkeypatch.setattr(hparams_module, "fit", recording_fit)
    space = {
        "lora_r": {"type": "categorical", "choices": [4, 8]},
        "batch_size": {"type": "categorical", "choices": [8, 16]},
    }
    params = tiny_params(
        tmp_path, mae_checkpoint, train={"eval_batch_size": 10}, hpo={"search_space": space}
    )
    run_preflight(params.model, params.train, params.hpo, params.seed, *data)
    assert seen == [(16, 10, 16, 1)]  # one batch of the largest size, one validation batch


@pytest.mark.parametrize(
    ("mistake", "error", "message"),
    [
        ({"model": {"checkpoint": "missing.pth"}}, CheckpointError,
         "model.checkpoint: .*missing.pth not found"),
        ({"model": {"num_classes": 3}}, ConfigError,
         r"model.num_classes: 3 is not allowed; the prepared train split holds grade 4 "
         r"\(set model.num_classes: 5\)"),
        ({"train": {"device": "cuda"}}, ConfigError,
         r"train.device: 'cuda' is not allowed; this machine sees 0 CUDA device"),
    ],
)  # fmt: skip
def test_a_mistake_stops_before_any_trial_and_the_fix_runs_the_budget(
    tmp_path, mae_checkpoint, data, mistake, error, message
):
    if "cuda" in str(mistake) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if "checkpoint" in str(mistake):
        mistake = {"model": {"checkpoint": str(tmp_path / "missing.pth")}}
    wrong = tiny_params(tmp_path, mae_checkpoint, **mistake)
    with pytest.raises(error, match=message):
        run_search(wrong, *data)
    assert n_trials_in(wrong) == 0
    fixed = tiny_params(tmp_path, mae_checkpoint)
    study, _ = run_search(fixed, *data)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_a_checkpoint_of_another_architecture_stops_before_any_trial(
    tmp_path, mae_checkpoint, data
):
    # The demo-size checkpoint given to a ViT-Large search: every trial would fail to load it.
    params = tiny_params(
        tmp_path, mae_checkpoint, model={"arch": "vit_large_patch16_224", "input_size": 32}
    )
    with pytest.raises(CheckpointError, match="does not fit model.arch"):
        run_search(params, *data)
    assert n_trials_in(params) == 0


def test_an_unexpected_failure_is_one_line_and_no_trial(
    tmp_path, mae_checkpoint, data, monkeypatch
):
    import retfound_hpo.training.hparams as hparams_module

    def broken_fit(*args, **kwargs):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\nmore detail")

    monkeypatch.setattr(hparams_module, "fit", broken_fit)
    params = tiny_params(tmp_path, mae_checkpoint)
    with pytest.raises(PreflightError) as err:
        run_search(params, *data)
    assert str(err.value) == (
        "preflight: one training step of the search space's largest configuration "
        "{'lora_r': 8, 'lora_targets': 'qkv', 'batch_size': 16} on cpu failed before any trial: "
        "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"
    )
    assert n_trials_in(params) == 0


def test_out_of_memory_in_the_preflight_only_warns(
    tmp_path, mae_checkpoint, data, monkeypatch, caplog
):
    import retfound_hpo.training.hparams as hparams_module

    real_fit, calls = hparams_module.fit, []

    def oom_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(hparams_module, "fit", oom_once)
    with caplog.at_level(logging.WARNING, logger="retfound_hpo.search.preflight"):
        study, _ = run_search(tiny_params(tmp_path, mae_checkpoint), *data)
    assert "ran out of memory" in caplog.text
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


def test_no_preflight_when_nothing_is_left_to_run(tmp_path, mae_checkpoint, data, monkeypatch):
    import retfound_hpo.search.workers as workers

    params = tiny_params(tmp_path, mae_checkpoint)
    run_search(params, *data)
    monkeypatch.setattr(workers, "run_preflight", lambda *a: pytest.fail("preflight ran"))
    assert len(run_search(params, *data)[0].trials) == 2


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (lambda p: p["model"].update(checkpoint="models/RETFound_cfp_weights.pth"),
         "error: model.checkpoint: models/RETFound_cfp_weights.pth not found"),
        (lambda p: p["model"].update(lora_targets=["qkvx"]),
         "error: model.lora_targets[0]: 'qkvx' is not allowed; choose from"),
        (lambda p: p["model"].update(num_classes=3),
         "error: model.num_classes: 3 is not allowed; the prepared train split holds grade 4"),
        (lambda p: p["train"].update(device="gpu"),
         "error: train.device: 'gpu' is not allowed; use auto, cpu, cuda"),
        (lambda p: p["hpo"]["search_space"]["batch_size"].update(choices=[0, 16]),
         "error: hpo.search_space.batch_size.choices[0]: 0 is not allowed; batch_size must be"),
    ],
)  # fmt: skip
def test_the_stage_stops_in_one_line_with_the_budget_untouched(
    tmp_path, mae_checkpoint, edit, line, monkeypatch, capsys
):
    """The issue's configuration mistakes, through stages/hpo_search.py as DVC runs it."""
    write_prepared(tmp_path / "data/prepared/train", easy_images(60))
    write_prepared(tmp_path / "data/prepared/val", easy_images(30, seed=1))
    tiny_params(tmp_path, mae_checkpoint, hpo={"output_dir": "optuna"})  # writes params.yaml
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["data"] = {"prepared_dir": "data/prepared"}
    edit(raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    code, err = run_script(REPO / "stages/hpo_search.py", tmp_path, monkeypatch, capsys)
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(line)
    assert "Traceback" not in err
    db = tmp_path / "optuna" / raw["hpo"].get("study_name", "retfound_lora_search") / "study.db"
    if db.exists():
        study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
        assert study.trials == []

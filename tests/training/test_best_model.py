"""train-best: the winner trained once per seed, every seed kept, the best on val delivered."""

import json
import re

import pytest

from conftest import easy_images, tiny_params, train_with
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.metrics.classification import classification_metrics
from retfound_hpo.model.saved import load_trained_model
from retfound_hpo.training import best_model
from retfound_hpo.training.best_model import read_best_hparams, train_best_models
from retfound_hpo.training.inference import predict_proba
from retfound_hpo.training.loop import FitResult

BEST = {"lora_r": 4, "lora_alpha": 16, "learning_rate": 5e-3, "batch_size": 16, "dropout": 0.1}


@pytest.fixture(scope="module")
def data():
    return easy_images(60), easy_images(30, seed=1)


def best_models(params, train, val):
    """train-best's work for `params`, as the stage calls it."""
    hparams = read_best_hparams(
        params.hpo.study_dir / "best_params.json", params.model, params.train
    )
    return train_best_models(
        params.train_best,
        params.model,
        params.train,
        hparams,
        seed=params.seed,
        metric=params.hpo.metric,
        train=train,
        val=val,
    )


def params_for(tmp_path, checkpoint, **train_best):
    params = tiny_params(
        tmp_path,
        checkpoint,
        train_best={
            "epochs": 2,
            "output_dir": str(tmp_path / "best_model"),
            "seeds_dir": str(tmp_path / "seeds"),
            **train_best,
        },
    )
    params.hpo.study_dir.mkdir(parents=True)
    (params.hpo.study_dir / "best_params.json").write_text(
        json.dumps({**BEST, "best_value": 50.0, "best_trial": 0})
    )
    return params


def test_each_seed_gets_a_model_and_the_best_on_val_is_delivered(tmp_path, mae_checkpoint, data):
    train, val = data
    params = params_for(tmp_path, mae_checkpoint, seeds=[3, 1, 2])
    runs = best_models(params, train, val)

    assert list(runs.results) == [3, 1, 2]
    accuracy = {seed: r.best_metrics["accuracy"] for seed, r in runs.results.items()}
    kappa = {seed: r.best_metrics["kappa"] for seed, r in runs.results.items()}
    assert len(set(kappa.values())) == 3, kappa  # each seed trains differently
    assert runs.best_seed == max(accuracy, key=accuracy.get)  # hpo.metric: accuracy

    for seed in (3, 1, 2):  # every seed's model is kept, loadable, and is that seed's model
        model, _ = load_trained_model(tmp_path / "seeds" / str(seed))
        probs = predict_proba(model, val.images, 64)
        assert classification_metrics(val.grades, probs)["kappa"] == pytest.approx(kappa[seed])
    delivered = tmp_path / "best_model"
    best = tmp_path / "seeds" / str(runs.best_seed)
    for name in ("adapter_model.safetensors", "model_config.json"):
        assert (delivered / name).read_bytes() == (best / name).read_bytes()
    assert not list(tmp_path.glob("*.tmp"))

    metrics = runs.metrics()
    assert metrics["best_seed"] == runs.best_seed
    assert metrics["val_accuracy"] == accuracy[runs.best_seed]
    assert {s: m["val_kappa"] for s, m in metrics["seeds"].items()} == {
        str(s): k for s, k in kappa.items()
    }
    history = runs.history()
    assert set(history["seed"]) == {runs.best_seed}
    assert list(history["val_kappa"]) == [h["val_kappa"] for h in runs.best.history]


def test_one_seed_trains_as_before(tmp_path, mae_checkpoint, data):
    train, val = data
    params = params_for(tmp_path, mae_checkpoint)  # seeds: null -> just `seed`
    runs = best_models(params, train, val)
    patience = params.train_best.early_stopping_patience
    hparams = read_best_hparams(
        params.hpo.study_dir / "best_params.json", params.model, params.train
    )
    _, before = train_with(hparams, params, 2, patience, train, val)

    assert list(runs.results) == [params.seed] and runs.best_seed == params.seed
    for now, then in zip(runs.best.history, before.history, strict=True):  # timings aside
        assert {k: v for k, v in now.items() if k != "epoch_seconds"} == pytest.approx(
            {k: v for k, v in then.items() if k != "epoch_seconds"}
        )
    assert {"best_epoch", "epochs_run", "val_accuracy", "val_kappa"} <= set(runs.metrics())
    # What the run cost, for the adaptation comparison: from the run and the folder on disk.
    cost = {k: runs.metrics()[k] for k in ("trainable_params", "delivery_bytes")}
    folder = tmp_path / "seeds" / str(params.seed)
    assert cost == {
        "trainable_params": runs.best.trainable_params,
        "delivery_bytes": sum(f.stat().st_size for f in folder.iterdir()),
    }
    assert runs.metrics()["seconds_per_epoch"] > 0 and runs.metrics()["peak_memory_mb"] > 0
    assert (tmp_path / "best_model/adapter_model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "seeds").iterdir()] == [str(params.seed)]


def fake_training(monkeypatch, scores: dict[int, float]) -> None:
    """Training returns the given val accuracy per seed; saving writes a marker file."""

    def train(hparams, model_cfg, train_cfg, *, seed, **kwargs):
        return seed, FitResult(best_epoch=1, best_metrics={"accuracy": scores[seed]})

    def save(model, out_dir, cfg, hparams):
        out_dir.mkdir(parents=True)
        (out_dir / "seed.txt").write_text(str(model))

    monkeypatch.setattr(best_model, "train_with_hparams", train)
    monkeypatch.setattr(best_model, "save_trained_model", save)


@pytest.mark.parametrize(
    ("scores", "best"),
    [
        ({5: 50.0, 6: 70.0, 7: 70.0}, 6),  # a tie goes to the first seed listed
        ({5: float("nan"), 6: 10.0, 7: 5.0}, 6),  # an undefined metric never wins
    ],
)
def test_the_seed_best_on_val_is_delivered(tmp_path, mae_checkpoint, monkeypatch, scores, best):
    fake_training(monkeypatch, scores)
    params = params_for(tmp_path, mae_checkpoint, seeds=list(scores))
    (tmp_path / "seeds/99").mkdir(parents=True)  # from an earlier run with other seeds
    runs = best_models(params, None, None)
    assert runs.best_seed == best
    assert (tmp_path / "best_model/seed.txt").read_text() == str(best)
    assert sorted(p.name for p in (tmp_path / "seeds").iterdir()) == [str(s) for s in scores]


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([], "train_best.seeds: [] is not allowed; list one or more different seeds"),
        ([1, 1], "train_best.seeds: [1, 1] is not allowed; list one or more different seeds"),
        ([1, -2], "train_best.seeds[1]: -2 is not allowed; must be an integer in [0, 2**32)"),
        ([1, "x"], "train_best.seeds[1]: expected int, got 'x'"),
        (7, "train_best.seeds: expected a list, got 7"),
    ],
)
def test_bad_seeds_are_one_line_errors(tmp_path, mae_checkpoint, seeds, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_params(tmp_path, mae_checkpoint, train_best={"seeds": seeds})


def test_seed_list_defaults_to_the_params_seed(tmp_path, mae_checkpoint):
    assert tiny_params(tmp_path, mae_checkpoint).train_best.seed_list(7) == [7]
    params = tiny_params(tmp_path, mae_checkpoint, train_best={"seeds": [4, 2]})
    assert params.train_best.seed_list(7) == [4, 2]

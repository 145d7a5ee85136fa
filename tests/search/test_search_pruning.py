"""Where the search spends its budget: pruning on hpo.prune_on, samplers, known-good starts."""

import optuna
import pandas as pd
import pytest

from conftest import easy_images, tiny_params, write_outputs
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.search.workers import run_search
from retfound_hpo.training.loop import FitResult

GOOD_LR, BAD_LR = 2e-3, 9e-3


def curve(learning_rate: float, epoch: int) -> dict[str, float]:
    """A validation row per epoch: trials at GOOD_LR improve, the one at BAD_LR stays poor."""
    good = learning_rate < 5e-3
    accuracy = (50.0 + 5 * epoch) if good else (30.0 - epoch)
    loss = (1.2 - 0.1 * epoch) if good else (2.0 + 0.05 * epoch)
    return {
        "epoch": epoch,
        "train_loss": loss,
        "val_accuracy": accuracy,
        "val_kappa": accuracy / 100,
        "val_auroc": 0.5 + accuracy / 200,
        "val_f1": accuracy / 150,
        "val_loss": loss,
    }


@pytest.fixture
def scripted_fit(monkeypatch):
    """The training loop replaced by curves fixed by the learning rate; the rest of a trial is
    real."""
    import retfound_hpo.training.hparams as hparams_module

    def fit(model, train, val, *, epochs, learning_rate, on_epoch_end=None, result=None, **kw):
        result = FitResult() if result is None else result
        for epoch in range(1, epochs + 1):
            row = curve(learning_rate, epoch)
            result.history.append(row)
            metrics = {k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_")}
            if not result.best_metrics or metrics["accuracy"] > result.best_metrics["accuracy"]:
                result.best_epoch, result.best_metrics = epoch, metrics
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        return result

    monkeypatch.setattr(hparams_module, "fit", fit)


def pruning_params(tmp_path, checkpoint, **hpo):
    """Three good trials, then a clearly worse one, run in that order (enqueued)."""
    sets = [{"learning_rate": lr} for lr in (GOOD_LR, GOOD_LR * 1.1, GOOD_LR * 1.2, BAD_LR)]
    return tiny_params(
        tmp_path,
        checkpoint,
        hpo={
            "n_trials": 4,
            "num_epochs": 4,
            "early_stopping_patience": 4,
            "pruner": "median",
            "pruner_startup_trials": 3,
            "pruner_warmup_epochs": 2,  # every trial gets 2 epochs
            "enqueue_trials": sets,
            **hpo,
        },
    )


@pytest.fixture
def data():
    return easy_images(40), easy_images(20, seed=1)


@pytest.mark.usefixtures("scripted_fit")
def test_a_clearly_worse_trial_is_pruned_and_its_curve_kept(tmp_path, mae_checkpoint, data):
    params = pruning_params(tmp_path, mae_checkpoint)
    study, _ = run_search(params, *data)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["PRUNED"]
    pruned = study.trials[3]
    # Reported every epoch until the pruner stopped it after its warm-up.
    assert pruned.intermediate_values == {1: 29.0, 2: 28.0}
    assert [row["epoch"] for row in pruned.user_attrs["history"]] == [1, 2]
    assert study.trials[0].intermediate_values == {e: 50.0 + 5 * e for e in range(1, 5)}
    write_outputs(study, params)
    table = pd.read_csv(params.hpo.study_dir / "trials.csv")
    assert table.loc[3, "best_val_acc"] == 29.0  # its best before it was stopped


@pytest.mark.usefixtures("scripted_fit")
def test_pruning_waits_for_enough_earlier_curves_at_an_epoch(tmp_path, mae_checkpoint, data):
    # Three earlier curves; the median pruner asked for four at an epoch before it prunes there.
    params = pruning_params(tmp_path, mae_checkpoint, pruner_min_trials=4)
    study, _ = run_search(params, *data)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


@pytest.mark.usefixtures("scripted_fit")
def test_the_pruner_ranks_trials_by_what_prune_on_names(tmp_path, mae_checkpoint, data):
    study, _ = run_search(pruning_params(tmp_path, mae_checkpoint, prune_on="loss"), *data)
    first = study.trials[0]
    assert first.intermediate_values == {e: pytest.approx(-(1.2 - 0.1 * e)) for e in range(1, 5)}
    assert first.value == 70.0  # the study's value stays hpo.metric (accuracy)
    assert study.trials[3].state.name == "PRUNED"
    (tmp_path / "auroc").mkdir()
    on_auroc = pruning_params(tmp_path / "auroc", mae_checkpoint, prune_on="auroc")
    study, _ = run_search(on_auroc, *data)
    assert study.trials[0].intermediate_values[2] == pytest.approx(0.5 + 60 / 200)


def test_an_enqueued_set_is_trial_0_and_runs_once(tmp_path, mae_checkpoint, data):
    known = {"lora_r": 4, "learning_rate": 3e-3, "batch_size": 16, "dropout": 0.2}
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"enqueue_trials": [known], "n_trials": 1})
    (first,) = run_search(params, *data)[0].trials
    assert first.params == known and first.user_attrs["enqueued"] == 0
    more = tiny_params(tmp_path, mae_checkpoint, hpo={"enqueue_trials": [known], "n_trials": 3})
    trials = run_search(more, *data)[0].trials
    assert len(trials) == 3 and [t.params == known for t in trials] == [True, False, False]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lora_r": 64}, r"hpo.enqueue_trials\[0\].lora_r: 64 is not allowed; a trial draws "
                         r"lora_r from \[4, 8\]"),
        ({"learning_rate": 0.5}, r"learning_rate: 0.5 is not allowed; a trial draws "
                                 r"learning_rate from \(0.001, 0.01\)"),
        ({"momentum": 0.9}, r"enqueue_trials\[0\].momentum: 'momentum' is not allowed; not in"),
    ],
)  # fmt: skip
def test_an_enqueued_set_outside_the_space_is_refused(tmp_path, mae_checkpoint, values, message):
    with pytest.raises(ConfigError, match=message):
        tiny_params(tmp_path, mae_checkpoint, hpo={"enqueue_trials": [values]})


def test_gp_sampler(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint, hpo={"sampler": "gp", "n_trials": 3})
    study, _ = run_search(params, *data)
    assert isinstance(study.sampler, optuna.samplers.GPSampler)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_each_finished_trial_keeps_its_curve_and_confusion_matrix(tmp_path, mae_checkpoint, data):
    from optuna.artifacts import get_all_artifact_meta

    params = tiny_params(tmp_path, mae_checkpoint, hpo={"n_trials": 1, "keep_adapters": True})
    study, _ = run_search(params, *data)
    (trial,) = study.trials
    names = {meta.filename for meta in get_all_artifact_meta(trial, storage=study._storage)}
    assert names == {
        "learning_curve.csv",
        "learning_curve.png",
        "confusion_matrix.png",
        "adapter.zip",
    }
    kept = list((params.hpo.study_dir / "artifacts").iterdir())
    assert len(kept) == 4  # in the study folder: optuna-dashboard --artifact-dir shows them
    curve = pd.DataFrame(trial.user_attrs["history"])
    assert list(curve["epoch"]) == list(range(1, trial.user_attrs["epochs_run"] + 1))

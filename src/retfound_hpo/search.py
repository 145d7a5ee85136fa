"""The Optuna search: a persistent study, the objective, and the guide's output files."""

from __future__ import annotations

import dataclasses
import gc
import logging
import pickle
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from retfound_hpo import tracking
from retfound_hpo.config import ConfigError, Params
from retfound_hpo.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from retfound_hpo.model import build_model, count_trainable
from retfound_hpo.train import CachedImages, NonFiniteLossError, fit

log = logging.getLogger(__name__)

GUIDE_HPARAMS = ("lora_r", "lora_alpha", "learning_rate", "batch_size", "dropout")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Values used for hyperparameters that the search space leaves out.
DEFAULT_HPARAMS = {
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "dropout": 0.0,
}


def storage_url(params: Params) -> str:
    return f"sqlite:///{params.hpo.study_dir / 'study.db'}"


def objective_column(metric: str) -> str:
    """The guide calls the objective column `best_val_acc`; other metrics follow suit."""
    return "best_val_acc" if metric == "accuracy" else f"best_val_{metric}"


def suggest_hparams(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per search-space entry."""
    values = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "int":
            values[name] = trial.suggest_int(
                name,
                spec["low"],
                spec["high"],
                step=spec.get("step", 1),
                log=spec.get("log", False),
            )
        else:
            values[name] = trial.suggest_float(
                name, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False)
            )
    return values


def resolve_hparams(suggested: dict[str, Any], params: Params) -> dict[str, Any]:
    """Suggested values over the defaults; weight decay defaults to train.weight_decay."""
    return {**DEFAULT_HPARAMS, "weight_decay": params.train.weight_decay, **suggested}


def train_config(
    hparams: dict[str, Any],
    params: Params,
    epochs: int,
    patience: int,
    train: CachedImages,
    val: CachedImages,
    on_epoch_end=None,
):
    """Build the model for `hparams` and run the shared training loop; returns (model, result)."""
    torch.manual_seed(params.seed)  # LoRA and head initialisation come from the seed too
    model = build_model(params.model, hparams["lora_r"], hparams["lora_alpha"], hparams["dropout"])
    result = fit(
        model,
        train,
        val,
        epochs=epochs,
        batch_size=hparams["batch_size"],
        learning_rate=hparams["learning_rate"],
        weight_decay=hparams["weight_decay"],
        patience=patience,
        metric=params.hpo.metric,
        cfg=params.train,
        seed=params.seed,
        num_classes=params.model.num_classes,
        on_epoch_end=on_epoch_end,
    )
    return model, result


def make_objective(params: Params, train: CachedImages, val: CachedImages):
    hpo = params.hpo

    def objective(trial: optuna.Trial) -> float:
        hparams = resolve_hparams(suggest_hparams(trial, hpo.search_space), params)
        run = tracking.start_trial_run(params, trial.number, hparams)

        def report(epoch: int, row: dict[str, float]) -> None:
            trial.set_user_attr("epochs_run", epoch)
            tracking.log_epoch(run, row)
            trial.report(row[f"val_{hpo.metric}"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            model, result = train_config(
                hparams, params, hpo.num_epochs, hpo.early_stopping_patience, train, val, report
            )
        except NonFiniteLossError as err:  # diverged: a bad region, not a broken trial
            trial.set_user_attr("fail_reason", str(err))
            raise optuna.TrialPruned(str(err)) from err
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            raise
        finally:
            tracking.finish(run)
            gc.collect()
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("trainable_params", count_trainable(model))
        trial.set_user_attr("images_per_second", round(result.images_per_second, 1))
        for key, value in result.best_metrics.items():
            trial.set_user_attr(f"val_{key}", value)
        return result.best_metrics[hpo.metric]

    return objective


def open_study(params: Params) -> optuna.Study:
    """Create or reopen the persistent study; refuse one built for another space or metric."""
    hpo = params.hpo
    hpo.study_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(storage_url(params))
    previous = (
        len(optuna.load_study(study_name=hpo.study_name, storage=storage).trials)
        if hpo.study_name in optuna.get_all_study_names(storage)
        else 0
    )
    # Reseeding with the trial count keeps a resumed search from replaying trial 0's draws.
    sampler = optuna.samplers.TPESampler(
        seed=params.seed + previous, n_startup_trials=hpo.sampler_startup_trials
    )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=hpo.pruner_startup_trials, n_warmup_steps=hpo.pruner_warmup_epochs
    )
    study = optuna.create_study(
        study_name=hpo.study_name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    signature = {"search_space": hpo.search_space, "metric": hpo.metric}
    stored = {k: study.user_attrs.get(k) for k in signature}
    if previous == 0 and not study.user_attrs:
        for key, value in signature.items():
            study.set_user_attr(key, value)
    elif stored != signature:
        raise ConfigError(
            f"hpo.study_name: study {hpo.study_name!r} in {hpo.study_dir} was run with another "
            f"search space or metric; pick a new hpo.study_name to start a fresh study"
        )
    # One process owns a study here, so any trial still RUNNING was cut off by a crash.
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", "interrupted")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        log.warning("trial %d was interrupted in an earlier run; marked FAIL", trial.number)
    return study


def run_search(params: Params, train: CachedImages, val: CachedImages) -> optuna.Study:
    """Run trials until the study holds hpo.n_trials finished ones (or the timeout passes)."""
    hpo = params.hpo
    study = open_study(params)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    remaining = hpo.n_trials - done
    log.info(
        "study %s: %d finished trial(s), running %d more", hpo.study_name, done, max(0, remaining)
    )
    if remaining > 0:
        timeout = hpo.timeout_hours * 3600 if hpo.timeout_hours else None
        study.optimize(
            make_objective(params, train, val),
            n_trials=remaining,
            timeout=timeout,
            catch=(Exception,),
            gc_after_trial=True,
        )
    return study


def trials_table(study: optuna.Study, space: dict[str, Any], metric: str) -> pd.DataFrame:
    """The guide's trials.csv columns, then everything the trials recorded."""
    names = [k for k in GUIDE_HPARAMS if k in space] + [k for k in space if k not in GUIDE_HPARAMS]
    rows = []
    for t in study.trials:
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "trial_number": t.number,
                **{k: t.params.get(k) for k in names},
                objective_column(metric): t.value,
                "state": t.state.name,
                "duration_seconds": duration,
                "datetime_start": t.datetime_start,
                "datetime_complete": t.datetime_complete,
                **t.user_attrs,
            }
        )
    return pd.DataFrame(rows)


def write_search_outputs(study: optuna.Study, params: Params) -> dict[str, Any] | None:
    """Write config.json, trials.csv, best_params.json and a self-contained study.pkl."""
    hpo, out = params.hpo, params.hpo.study_dir
    config = {
        **dataclasses.asdict(params),
        "storage": storage_url(params),
        "versions": {"optuna": optuna.__version__},
    }
    write_json_atomic(out / "config.json", config)
    table = trials_table(study, hpo.search_space, hpo.metric)
    write_text_atomic(out / "trials.csv", table.to_csv(index=False))

    # study.pkl for the guide's users: an in-memory copy, so it unpickles without the database.
    memory = optuna.storages.InMemoryStorage()
    optuna.copy_study(
        from_study_name=study.study_name, from_storage=storage_url(params), to_storage=memory
    )
    copy = optuna.load_study(study_name=study.study_name, storage=memory)
    write_bytes_atomic(out / "study.pkl", pickle.dumps(copy))

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        return None
    best = study.best_trial
    best_params = {**best.params, "best_value": round(best.value, 4), "best_trial": best.number}
    write_json_atomic(out / "best_params.json", best_params)
    return best_params

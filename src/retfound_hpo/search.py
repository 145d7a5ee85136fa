"""The Optuna search: a persistent study and the objective (suggest, train, report, prune)."""

from __future__ import annotations

import gc
import logging
import os
import resource
import socket
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from retfound_hpo import tracking
from retfound_hpo.config import Params
from retfound_hpo.errors import UserError
from retfound_hpo.model import build_model, count_trainable
from retfound_hpo.space import suggest_hparams
from retfound_hpo.train import CachedImages, FitResult, NonFiniteLossError, fit
from retfound_hpo.trial_artifacts import keep_trial_artifacts

log = logging.getLogger(__name__)


class _UserErrorsWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; a user error is one line, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_UserErrorsWithoutTraceback())

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Values for hyperparameters that the search space leaves out (train.* supplies the rest).
DEFAULT_HPARAMS = {
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "dropout": 0.0,
}


def objective_column(metric: str) -> str:
    """The guide calls the objective column `best_val_acc`; other metrics follow suit."""
    return "best_val_acc" if metric == "accuracy" else f"best_val_{metric}"


def resolve_hparams(drawn: dict[str, Any], params: Params) -> dict[str, Any]:
    """Every hyperparameter a run needs: drawn values over the params defaults."""
    t, m = params.train, params.model
    defaults = {
        **DEFAULT_HPARAMS,
        "weight_decay": t.weight_decay,
        "warmup_epochs": t.warmup_epochs,
        "label_smoothing": t.label_smoothing,
        "layer_decay": t.layer_decay,
        "lora_dropout": m.lora_dropout,
        "lora_targets": ",".join(m.lora_targets),
    }
    return {**defaults, **drawn}


def train_config(
    hparams: dict[str, Any],
    params: Params,
    epochs: int,
    patience: int,
    train: CachedImages,
    val: CachedImages,
    on_epoch_end=None,
    progress: FitResult | None = None,
):
    """Build the model for `hparams` and run the shared training loop; returns (model, result).
    `progress`, if given, is filled as epochs finish (see fit)."""
    torch.manual_seed(params.seed)  # LoRA and head initialisation come from the seed too
    model = build_model(
        params.model,
        hparams["lora_r"],
        hparams["lora_alpha"],
        hparams["dropout"],
        lora_dropout=hparams["lora_dropout"],
        lora_targets=hparams["lora_targets"].split(","),
    )
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
        warmup_epochs=hparams["warmup_epochs"],
        label_smoothing=hparams["label_smoothing"],
        layer_decay=hparams["layer_decay"],
        on_epoch_end=on_epoch_end,
        result=progress,
    )
    return model, result


def pruning_signal(row: dict[str, float], prune_on: str, metric: str) -> float:
    """The per-epoch value the pruner ranks trials by (higher is better): the objective's
    metric, another validation metric, or the class-balanced validation loss, negated."""
    name = metric if prune_on == "objective" else prune_on
    value = row[f"val_{name}"]
    return -value if name == "loss" else value


def is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return (
        isinstance(err, torch.OutOfMemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def peak_memory_mb(device_type: str) -> float:
    """Peak GPU memory of this trial, or the process's peak resident memory on CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_objective(params: Params, train: CachedImages, val: CachedImages):
    hpo = params.hpo

    def objective(trial: optuna.Trial) -> float | tuple[float, int]:
        # Which process runs the trial: how a killed worker's trial is found in the study.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        first = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        if first is not None:  # a dead worker's trial, run again with the same parameters
            trial.set_user_attr("retry_of", first)
            trial.set_user_attr("fail_reason", None)
        hparams = resolve_hparams(suggest_hparams(trial, hpo.search_space), params)
        trial.set_user_attr("hparams", hparams)
        run = tracking.start_trial_run(params, trial.number, hparams)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

        def report(epoch: int, row: dict[str, float]) -> None:
            trial.set_user_attr("epochs_run", epoch)
            tracking.log_epoch(run, row)
            if hpo.multi_objective:  # Optuna's pruners rank one objective only
                return
            trial.report(pruning_signal(row, hpo.prune_on, hpo.metric), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        model, progress = None, FitResult()  # progress outlives a pruned run: its curve is kept
        try:
            model, result = train_config(
                hparams,
                params,
                hpo.num_epochs,
                hpo.early_stopping_patience,
                train,
                val,
                report,
                progress,
            )
            trainable = count_trainable(model)
            device_type = next(model.parameters()).device.type
        except NonFiniteLossError as err:  # diverged: a bad region, not a broken trial
            trial.set_user_attr("fail_reason", str(err))
            raise optuna.TrialPruned(str(err)) from err
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            raise
        except UserError as err:  # bad input (e.g. the checkpoint went away): every trial fails
            trial.set_user_attr("fail_reason", str(err))
            trial.set_user_attr("setup_error", True)  # the worker stops; the trial is not counted
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            if is_out_of_memory(err):
                reason = f"out of memory at batch_size {hparams['batch_size']}: {reason}"
            trial.set_user_attr("fail_reason", reason)
            raise
        finally:  # completed, pruned or failed: keep what the epochs showed
            _record_progress(trial, progress)
            adapter = model if hpo.keep_adapters else None
            keep_trial_artifacts(trial, hpo.study_dir, progress, val.grades, adapter)
            tracking.finish(run)
            del model
            gc.collect()  # release memory now: an OOM trial must not starve the next one
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        trial.set_user_attr("trainable_params", trainable)
        trial.set_user_attr("images_per_second", round(result.images_per_second, 1))
        trial.set_user_attr("peak_memory_mb", round(peak_memory_mb(device_type), 1))
        if hpo.multi_objective:
            return result.best_metrics[hpo.metric], trainable
        return result.best_metrics[hpo.metric]

    return objective


def _record_progress(trial: optuna.Trial, progress: FitResult) -> None:
    """The trial's epochs so far: its learning curve and its best epoch's validation metrics
    (for a pruned trial, the best it reached before it was stopped)."""
    trial.set_user_attr("epochs_run", progress.epochs_run)
    trial.set_user_attr("history", [_rounded(row) for row in progress.history])
    if progress.best_metrics:
        trial.set_user_attr("best_epoch", progress.best_epoch)
        for key, value in progress.best_metrics.items():
            trial.set_user_attr(f"val_{key}", value)


def _rounded(row: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


def make_sampler(
    params: Params, previous_trials: int, worker_index: int = 0
) -> optuna.samplers.BaseSampler:
    # Reseeding with the trial count keeps a resumed search from replaying the first draws;
    # each worker draws from its own stream.
    seed = params.seed + previous_trials + 100_003 * worker_index
    if params.hpo.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if params.hpo.sampler == "gp":
        # A Gaussian process over the space; its own docs recommend it for 10-100 trials of
        # continuous, log-scale parameters. Conditional entries fall back to random draws.
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=params.hpo.sampler_startup_trials,
            warn_independent_sampling=False,
        )
    # constant_liar (Optuna 5's default, kept): running trials count as bad draws, so workers
    # sharing the study spread out instead of drawing the same point.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=params.hpo.sampler_startup_trials, multivariate=True
    )


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    hpo = params.hpo
    if hpo.pruner == "none" or hpo.multi_objective:
        return optuna.pruners.NopPruner()
    if hpo.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=hpo.pruner_min_epochs,
            max_resource=hpo.num_epochs,
            reduction_factor=hpo.pruner_reduction_factor,
        )
    if hpo.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=hpo.pruner_min_epochs, reduction_factor=hpo.pruner_reduction_factor
        )
    return optuna.pruners.MedianPruner(
        n_startup_trials=hpo.pruner_startup_trials, n_warmup_steps=hpo.pruner_warmup_epochs
    )

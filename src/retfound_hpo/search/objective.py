"""The Optuna objective: suggest, train through the shared loop, report each epoch, prune."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

import optuna
import torch

from retfound_hpo.core.errors import UserError
from retfound_hpo.core.params import HpoConfig, ModelConfig, TrainConfig, WandbConfig
from retfound_hpo.model.adapters import count_trainable
from retfound_hpo.search import tracking
from retfound_hpo.search.strategy import pruning_signal
from retfound_hpo.search.suggest import suggest_hparams
from retfound_hpo.search.trial_artifacts import keep_trial_artifacts
from retfound_hpo.training.device import is_out_of_memory, peak_memory_mb, release_gpu_memory
from retfound_hpo.training.hparams import resolve_hparams, train_with_hparams
from retfound_hpo.training.inputs import CachedImages
from retfound_hpo.training.loop import FitResult, NonFiniteLossError

log = logging.getLogger(__name__)


class _UserErrorsWithoutTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; a user error is one line, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_UserErrorsWithoutTraceback())


def make_objective(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    hpo: HpoConfig,
    wandb: WandbConfig,
    seed: int,
    train: CachedImages,
    val: CachedImages,
) -> Callable[[optuna.Trial], float | tuple[float, int]]:
    """The objective of a study: one trial = the drawn hyperparameters trained on `train`,
    reported and pruned on `val` every epoch; its value is the best epoch's val hpo.metric."""

    def objective(trial: optuna.Trial) -> float | tuple[float, int]:
        # Which process runs the trial: how a killed worker's trial is found in the study.
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        first = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        if first is not None:  # a dead worker's trial, run again with the same parameters
            trial.set_user_attr("retry_of", first)
            trial.set_user_attr("fail_reason", None)
        hparams = resolve_hparams(suggest_hparams(trial, hpo.search_space), model_cfg, train_cfg)
        trial.set_user_attr("hparams", hparams)
        run = tracking.start_trial_run(wandb, hpo.study_name, trial.number, hparams)
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
            model, result = train_with_hparams(
                hparams,
                model_cfg,
                train_cfg,
                seed=seed,
                metric=hpo.metric,
                epochs=hpo.num_epochs,
                patience=hpo.early_stopping_patience,
                train=train,
                val=val,
                on_epoch_end=report,
                progress=progress,
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
            release_gpu_memory()  # an OOM trial's tensors must not starve the next one
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

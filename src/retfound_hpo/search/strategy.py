"""How the search explores and stops: the sampler, the pruner and the signal it ranks by."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from retfound_hpo.core.params import HpoConfig

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def pruning_signal(row: dict[str, float], prune_on: str, metric: str) -> float:
    """The per-epoch value the pruner ranks trials by (higher is better): the objective's
    metric, another validation metric, or the class-balanced validation loss, negated."""
    name = metric if prune_on == "objective" else prune_on
    value = row[f"val_{name}"]
    return -value if name == "loss" else value


def make_sampler(
    hpo: HpoConfig, seed: int, previous_trials: int, worker_index: int = 0
) -> optuna.samplers.BaseSampler:
    """hpo.sampler, seeded from `seed`, the trials so far and the worker."""
    # Reseeding with the trial count keeps a resumed search from replaying the first draws;
    # each worker draws from its own stream.
    seed = seed + previous_trials + 100_003 * worker_index
    if hpo.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if hpo.sampler == "gp":
        # A Gaussian process over the space; its own docs recommend it for 10-100 trials of
        # continuous, log-scale parameters. Conditional entries fall back to random draws.
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=hpo.sampler_startup_trials,
            warn_independent_sampling=False,
        )
    # constant_liar (Optuna 5's default, kept): running trials count as bad draws, so workers
    # sharing the study spread out instead of drawing the same point.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=hpo.sampler_startup_trials, multivariate=True
    )


def make_pruner(hpo: HpoConfig) -> optuna.pruners.BasePruner:
    """hpo.pruner (none in multi-objective mode: Optuna's pruners rank one objective)."""
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
    # n_min_trials: with one earlier curve at an epoch, "the median" is that one curve.
    return optuna.pruners.MedianPruner(
        n_startup_trials=hpo.pruner_startup_trials,
        n_warmup_steps=hpo.pruner_warmup_epochs,
        n_min_trials=hpo.pruner_min_trials,
    )

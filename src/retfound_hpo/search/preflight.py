"""The preflight: what would fail every trial is found before the first one.

Params validation checks every value on its own (core.checks, core.space). What it cannot see is
how they meet the data, the checkpoint and the machine: grades the model has no output for, a
checkpoint that does not load, a device that is not there, a LoRA target the architecture
lacks, a checkpoint of another arch. So before any trial, the search builds the model of
model.adaptation as the search space's largest configuration would (highest rank, most LoRA
targets, largest batch), and runs one training step and one validation batch on real prepared
images, on the configured device, through the same `fit` every trial uses. A mistake stops the
stage in one line and records no trial.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from retfound_hpo.core.errors import ConfigError, UserError
from retfound_hpo.core.params import HpoConfig, ModelConfig, TrainConfig
from retfound_hpo.training.device import is_out_of_memory, release_gpu_memory, resolve_device
from retfound_hpo.training.hparams import resolve_hparams, train_with_hparams
from retfound_hpo.training.inputs import CachedImages
from retfound_hpo.training.loop import NonFiniteLossError

log = logging.getLogger(__name__)


class PreflightError(UserError):
    """The search space's largest configuration failed its one training step."""


def _largest(name: str, values: list[Any]) -> Any:
    """The value of `name` that costs the most memory: most LoRA targets, else the largest."""
    if name == "lora_targets":
        return max(values, key=lambda v: len(v.split(",")))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return max(values)
    return values[0]


def largest_hparams(space: dict[str, dict]) -> dict[str, Any]:
    """Each entry's most demanding value over its choices, bounds and cases (conditions
    ignored: the preflight is not a trial and may combine what no trial draws together)."""
    drawn = {}
    for name, spec in space.items():
        dists = [spec, *({**spec, **case} for case in spec.get("cases") or [])]
        if spec["type"] == "categorical":
            values = [c for d in dists for c in d["choices"]]
        else:
            values = [d["high"] for d in dists]
        drawn[name] = _largest(name, values)
    return drawn


def check_grades(num_classes: int, train: CachedImages, val: CachedImages) -> None:
    """Every grade in the data needs an output of the model."""
    n = num_classes
    for name, data in (("train", train), ("val", val)):
        if len(data) and int(np.max(data.grades)) >= n:
            top = int(np.max(data.grades))
            raise ConfigError(
                f"model.num_classes: {n} is not allowed; the prepared {name} split holds grade "
                f"{top} (set model.num_classes: {top + 1})"
            )


def run_preflight(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    hpo: HpoConfig,
    seed: int,
    train: CachedImages,
    val: CachedImages,
) -> None:
    """One training step of the largest configuration and one validation batch, or a one-line
    error. Running out of memory is only a warning: trials with smaller settings still fit."""
    check_grades(model_cfg.num_classes, train, val)
    device = resolve_device(train_cfg.device)  # a device that is not there: ConfigError
    hparams = resolve_hparams(largest_hparams(hpo.search_space), model_cfg, train_cfg)
    shown = {k: hparams[k] for k in ("lora_r", "lora_targets", "batch_size") if k in hparams}
    n_train = min(len(train), hparams["batch_size"])  # one batch: one optimizer step
    n_val = min(len(val), train_cfg.eval_batch_size)  # one validation batch
    one_step = CachedImages(train.images[:n_train], train.grades[:n_train])
    one_batch = CachedImages(val.images[:n_val], val.grades[:n_val])
    start = time.perf_counter()
    model = None
    try:
        model, _ = train_with_hparams(
            hparams,
            model_cfg,
            train_cfg,
            seed=seed,
            metric=hpo.metric,
            epochs=1,
            patience=1,
            train=one_step,
            val=one_batch,
        )
    except UserError:
        raise
    except NonFiniteLossError as err:  # a bad learning rate is a trial's problem, not setup's
        log.warning("preflight: %s with the largest configuration %s", err, shown)
        return
    except Exception as err:
        message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if is_out_of_memory(err):
            log.warning(
                "preflight: the largest configuration %s ran out of memory on %s (%s): trials "
                "that draw it will fail fast and the search goes on",
                shown,
                device,
                message,
            )
            return
        log.debug("preflight failed", exc_info=True)
        raise PreflightError(
            f"preflight: one training step of the search space's largest configuration {shown} "
            f"on {device} failed before any trial: {message}"
        ) from None
    finally:
        del model
        release_gpu_memory()  # the first trial gets the memory the step took
    log.info(
        "preflight passed: one training step of %s and one validation batch on %s in %.1f s",
        shown,
        device,
        time.perf_counter() - start,
    )

"""A hyperparameter set (drawn by a trial, or the search's best) as one training run."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from retfound_hpo.core.params import ModelConfig, TrainConfig
from retfound_hpo.core.space_sections import EXCLUDED
from retfound_hpo.model.adapters import build_model
from retfound_hpo.training.inputs import CachedImages
from retfound_hpo.training.loop import EpochCallback, FitResult, fit

# Values for hyperparameters that the search space leaves out (train.* supplies the rest).
DEFAULT_HPARAMS = {
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "dropout": 0.0,
}


def resolve_hparams(
    drawn: dict[str, Any], model: ModelConfig, train: TrainConfig
) -> dict[str, Any]:
    """Every hyperparameter a run of model.adaptation needs: drawn values over the model.* and
    train.* defaults (no LoRA values without LoRA)."""
    t, m = train, model
    defaults = {
        **DEFAULT_HPARAMS,
        "weight_decay": t.weight_decay,
        "warmup_epochs": t.warmup_epochs,
        "label_smoothing": t.label_smoothing,
        "layer_decay": t.layer_decay,
        "lora_dropout": m.lora_dropout,
        "lora_targets": ",".join(m.lora_targets),
    }
    excluded = EXCLUDED[m.adaptation]
    return {k: v for k, v in {**defaults, **drawn}.items() if k not in excluded}


def train_with_hparams(
    hparams: dict[str, Any],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    seed: int,
    metric: str,
    epochs: int,
    patience: int,
    train: CachedImages,
    val: CachedImages,
    on_epoch_end: EpochCallback | None = None,
    progress: FitResult | None = None,
) -> tuple[nn.Module, FitResult]:
    """Build the model for `hparams` and run the shared training loop; returns (model, result).

    Early stopping and the kept epoch follow val `metric`; `progress`, if given, is filled as
    epochs finish (see fit)."""
    torch.manual_seed(seed)  # LoRA and head initialisation come from the seed too
    lora = {}
    if model_cfg.adaptation == "lora":
        lora = dict(
            lora_r=hparams["lora_r"],
            lora_alpha=hparams["lora_alpha"],
            lora_dropout=hparams["lora_dropout"],
            lora_targets=hparams["lora_targets"].split(","),
        )
    model = build_model(model_cfg, dropout=hparams["dropout"], **lora)
    result = fit(
        model,
        train,
        val,
        epochs=epochs,
        batch_size=hparams["batch_size"],
        learning_rate=hparams["learning_rate"],
        weight_decay=hparams["weight_decay"],
        patience=patience,
        metric=metric,
        cfg=train_cfg,
        seed=seed,
        num_classes=model_cfg.num_classes,
        warmup_epochs=hparams["warmup_epochs"],
        label_smoothing=hparams["label_smoothing"],
        layer_decay=hparams.get("layer_decay", 1.0),  # none for a linear probe: only the head
        on_epoch_end=on_epoch_end,
        result=progress,
    )
    return model, result

"""The one training loop (fit), used by every HPO trial and by train-best."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2 as transforms
from tqdm import tqdm

from retfound_hpo.core.params import TrainConfig
from retfound_hpo.metrics.classification import classification_metrics
from retfound_hpo.training.device import autocast, autocast_dtype, peak_memory_mb, resolve_device
from retfound_hpo.training.inference import predict_proba
from retfound_hpo.training.inputs import (
    CachedImages,
    augment,
    normalizer_for,
    random_erase,
    train_loader,
)
from retfound_hpo.training.optim import build_optimizer, warmup_cosine

log = logging.getLogger(__name__)
CHECK_EVERY = 20  # steps between checks that the training loss is finite (each syncs a GPU)

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_val_probs: np.ndarray | None = None  # (N_val, C) at the best epoch
    images_per_second: float = 0.0
    trainable_params: int = 0
    peak_memory_mb: float = 0.0  # GPU memory of this run, or the process's peak RSS on CPU

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def seconds_per_epoch(self) -> float:
        """Mean training time of an epoch (validation excluded)."""
        times = [row["epoch_seconds"] for row in self.history]
        return float(np.mean(times)) if times else math.nan


def balanced_nll(grades: np.ndarray, probs: np.ndarray) -> float:
    """Cross-entropy averaged per grade, then over the grades present: unlike the plain mean,
    a model that predicts the majority grade well and the rare ones badly scores badly."""
    grades = np.asarray(grades)
    nll = -np.log(np.clip(probs[np.arange(len(grades)), grades], 1e-12, None))  # (N,)
    return float(np.mean([nll[grades == g].mean() for g in np.unique(grades)]))


def fit(
    model: nn.Module,
    train_data: CachedImages,
    val_data: CachedImages,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    patience: int,
    metric: str,
    cfg: TrainConfig,
    seed: int,
    num_classes: int = 5,
    warmup_epochs: int = 0,
    label_smoothing: float = 0.0,
    layer_decay: float = 1.0,
    on_epoch_end: EpochCallback | None = None,
    result: FitResult | None = None,
) -> FitResult:
    """Train the trainable parameters of `model`; validate each epoch; keep the best epoch.

    Stops after `patience` epochs without improvement of val `metric`. `on_epoch_end` receives
    (epoch, row) and may raise (e.g. optuna.TrialPruned) to stop the run; a `result` passed in
    is filled as epochs finish, so such a caller keeps the history and the best epoch's
    validation probabilities. The optimizer steps every `cfg.grad_accum_steps` batches
    (effective batch = batch_size x grad_accum_steps).
    """
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    dtype = autocast_dtype(cfg.amp, device)
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        # Subnormal floats (e.g. AdamW's second moments of the tiny gradients behind a head
        # initialised at std 2e-5) are ~10x slower on x86 CPUs. Flushing them to zero made a
        # full fine-tuning step of the demo ViT ~9x faster and left LoRA's losses bit-identical.
        torch.set_flush_denormal(True)
    normalize = normalizer_for(model).to(device)
    if cfg.augment == "randaugment":  # the official recipe's stronger, per-image policy
        train_data = CachedImages(
            train_data.images, train_data.grades, transforms.RandAugment(num_ops=2, magnitude=9)
        )
    loader = train_loader(train_data, batch_size, cfg, seed, num_classes, device)
    aug_generator = torch.Generator().manual_seed(seed + 1)

    class_weights = None
    if cfg.class_balance == "loss":  # inverse-frequency weights keep training off "always grade 0"
        counts = np.bincount(train_data.grades, minlength=num_classes).clip(min=1)
        class_weights = torch.tensor(
            len(train_data.grades) / (num_classes * counts), dtype=torch.float32, device=device
        )
    criterion = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    optimizer = build_optimizer(
        model, learning_rate, weight_decay, layer_decay, fused=device.type == "cuda"
    )
    accum = cfg.grad_accum_steps
    steps_per_epoch = math.ceil(len(loader) / accum)
    scheduler = warmup_cosine(optimizer, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    result = FitResult() if result is None else result
    result.trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    best_state, bad_epochs, seen, train_time = None, 0, 0, 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        epoch_images = 0
        batches = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False, disable=None)
        for step, (x, y) in enumerate(batches, start=1):
            x = normalize(x.to(device, non_blocking=True))  # (B, 3, S, S)
            y = y.to(device, non_blocking=True)  # (B,)
            x = random_erase(augment(x, aug_generator), cfg.random_erasing)
            with autocast(device, dtype):
                loss = criterion(model(x).float(), y)
            # The gradient of an optimizer step is the mean over its batches; the epoch's last
            # group may hold fewer than `accum` of them.
            group = min(accum, len(loader) - (step - 1) // accum * accum)
            scaler.scale(loss / group).backward()
            if step % accum == 0 or step == len(loader):  # accumulate, then one optimizer step
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            loss_sum += loss.detach() * len(y)
            epoch_images += len(y)
            if step % CHECK_EVERY == 0 or step == len(loader):  # one GPU sync per CHECK_EVERY
                if not math.isfinite(loss_sum.item()):
                    raise NonFiniteLossError(f"non-finite training loss at epoch {epoch}")
        epoch_time = time.perf_counter() - start
        train_time += epoch_time
        seen += epoch_images

        probs = predict_proba(
            model, val_data.images, cfg.eval_batch_size, device, cfg.amp, desc="validate"
        )
        val = classification_metrics(val_data.grades, probs)
        val["loss"] = balanced_nll(val_data.grades, probs)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / max(1, epoch_images),  # images used (drop_last)
            "lr": max(g["lr"] for g in optimizer.param_groups),  # the head's, with layer decay
            "epoch_seconds": epoch_time,
            **{f"val_{k}": v for k, v in val.items()},
        }
        result.history.append(row)
        improved = not result.best_metrics or val[metric] > result.best_metrics[metric]
        if improved:
            result.best_epoch, result.best_metrics, bad_epochs = epoch, val, 0
            result.best_val_probs = probs
            best_state = copy.deepcopy(
                {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
            )
        else:
            bad_epochs += 1
        log.info(
            "epoch %d/%d loss %.4f val acc %.2f kappa %.3f auroc %.3f (%.1fs)%s",
            epoch,
            epochs,
            row["train_loss"],
            val["accuracy"],
            val["kappa"],
            val["auroc"],
            epoch_time,
            " *" if improved else "",
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if bad_epochs >= patience:
            log.info("early stopping: no val %s improvement for %d epochs", metric, patience)
            break

    result.images_per_second = seen / max(train_time, 1e-9)
    result.peak_memory_mb = peak_memory_mb(device.type)
    if best_state is not None:  # hand back the best epoch's weights, not the last epoch's
        model.load_state_dict(best_state, strict=False)
    return result

"""Training-loop efficiency: a trial's training throughput vs a bare PyTorch loop.

Both train the same model (the demo backbone with LoRA, as a trial builds it) with the same batch
size over the same in-memory images. The trial side is `fit` as the objective calls it (DataLoader,
class-balanced loss, augmentation, AMP where available, divergence checks); the bare side is
forward, cross-entropy, backward and AdamW over pre-normalised tensors. Target: ratio >= 0.9.

    python bench/loop_efficiency.py [--n 512] [--batch-size 32] [--epochs 3] [--repeats 3]

Prints JSON; images/s are over training only (validation excluded on both sides), best of repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from retfound_hpo.core.params import ModelConfig, TrainConfig
from retfound_hpo.model.adapters import build_model
from retfound_hpo.training.device import autocast_dtype, resolve_device
from retfound_hpo.training.inputs import CachedImages, Normalizer
from retfound_hpo.training.loop import fit

CHECKPOINT = "models/demo_backbone/checkpoint.pth"


def new_model(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, lora_r=8, lora_alpha=16, dropout=0.1, checkpoint=CHECKPOINT)


def trial_throughput(cfg, train, val, batch_size: int, epochs: int) -> float:
    result = fit(
        new_model(cfg),
        train,
        val,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=3e-3,
        weight_decay=0.05,
        patience=epochs,
        metric="accuracy",
        cfg=TrainConfig(),
        seed=0,
    )
    return result.images_per_second


def bare_throughput(cfg, images: np.ndarray, grades: np.ndarray, batch_size: int, epochs: int):
    device = resolve_device("auto")
    dtype = autocast_dtype("auto", device)
    model = new_model(cfg).to(device).train()
    x_all = Normalizer().to(device)(torch.from_numpy(images).permute(0, 3, 1, 2).to(device))
    y_all = torch.from_numpy(grades).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.05)
    n_batches = len(images) // batch_size  # drop_last, as fit does
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), device=device)
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x_all[idx]).float(), y_all[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_batches * batch_size * epochs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = ModelConfig(checkpoint=CHECKPOINT)
    rng = np.random.default_rng(0)
    size = cfg.input_size
    images = rng.integers(0, 256, (args.n, size, size, 3), dtype=np.uint8)
    grades = rng.integers(0, 5, args.n)
    train = CachedImages(images, grades)
    val = CachedImages(images[:32], grades[:32])

    trial, bare = [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both sides
        trial.append(trial_throughput(cfg, train, val, args.batch_size, args.epochs))
        bare.append(bare_throughput(cfg, images, grades, args.batch_size, args.epochs))
    ratio = max(trial) / max(bare)
    print(
        json.dumps(
            {
                "benchmark": "trial training throughput vs bare PyTorch loop",
                "device": str(resolve_device("auto")),
                "threads": torch.get_num_threads(),
                "images": args.n,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "trial_images_per_s": [round(v, 1) for v in trial],
                "bare_images_per_s": [round(v, 1) for v in bare],
                "efficiency": round(ratio, 3),
                "target": 0.9,
                "meets_target": ratio >= 0.9,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

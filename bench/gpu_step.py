"""ViT-Large LoRA training on a GPU: images/s of the trial loop and the share of peak bf16 FLOP/s.

Runs `fit` (the loop every trial uses: DataLoader with pinned memory and workers, non-blocking
copies, bf16 autocast or fp16 with a scaler, fused AdamW, timm's SDPA attention) for a few epochs
over random in-memory images, and counts the FLOPs of one training step with PyTorch's
FlopCounterMode. Random backbone weights: throughput does not depend on them.

    python bench/gpu_step.py [--batch-size 64] [--n 2048] [--epochs 2] [--num-workers 4]
    python bench/gpu_step.py --arch vit_demo --input-size 96 --n 256   # a CPU smoke run

Prints JSON. The share is achieved FLOP/s over the GPU's dense bf16 peak (from its name, or
--peak-tflops); the images/s is the last epoch's (the first one warms up).
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from retfound_hpo.core.params import ModelConfig, TrainConfig
from retfound_hpo.model.adapters import apply_lora
from retfound_hpo.model.backbones import build_backbone
from retfound_hpo.training.device import autocast_dtype, resolve_device
from retfound_hpo.training.inputs import CachedImages, Normalizer
from retfound_hpo.training.loop import fit

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # longest names first where they overlap
        if key in device_name:
            return value
    return None


def step_flops(model, cfg: ModelConfig, batch_size: int, device, dtype) -> int:
    """FLOPs of one forward + backward pass of a batch, as counted by PyTorch."""
    x = torch.randint(0, 256, (batch_size, 3, cfg.input_size, cfg.input_size), dtype=torch.uint8)
    x = Normalizer().to(device)(x.to(device))
    y = torch.zeros(batch_size, dtype=torch.long, device=device)
    model.to(device).train()
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_large_patch16_224")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = resolve_device("auto")
    dtype = autocast_dtype("auto", device)
    cfg = ModelConfig(arch=args.arch, input_size=args.input_size, drop_path_rate=0.2)
    torch.manual_seed(0)
    model = apply_lora(build_backbone(cfg, 0.1), cfg, args.lora_r, 2 * args.lora_r)

    rng = np.random.default_rng(0)
    shape = (args.n, args.input_size, args.input_size, 3)
    train = CachedImages(rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 5, args.n))
    val = CachedImages(train.images[: args.batch_size], train.grades[: args.batch_size])
    train_cfg = TrainConfig(num_workers=args.num_workers)
    result = fit(
        model,
        train,
        val,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=1e-4,
        weight_decay=0.05,
        patience=args.epochs,
        metric="accuracy",
        cfg=train_cfg,
        seed=0,
    )
    last = result.history[-1]
    images_per_s = (args.n // args.batch_size) * args.batch_size / last["epoch_seconds"]

    flops_per_image = step_flops(model, cfg, args.batch_size, device, dtype) / args.batch_size
    achieved = images_per_s * flops_per_image / 1e12
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or peak_tflops(name)
    print(
        json.dumps(
            {
                "benchmark": "LoRA training step throughput",
                "device": name,
                "arch": args.arch,
                "input_size": args.input_size,
                "batch_size": args.batch_size,
                "autocast": str(dtype).removeprefix("torch.") if dtype else "none",
                "sdpa_attention": timm.layers.use_fused_attn(),
                "fused_adamw": device.type == "cuda",
                "dataloader_workers": args.num_workers,
                "images_per_s": round(images_per_s, 1),
                "train_gflops_per_image": round(flops_per_image / 1e9, 2),
                "achieved_tflops": round(achieved, 2),
                "peak_bf16_tflops": peak,
                "share_of_peak": round(achieved / peak, 3) if peak else None,
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if device.type == "cuda"
                else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

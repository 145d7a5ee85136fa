"""What each adaptation costs on a backbone: trainable parameters, training speed, peak memory
and the delivered model's size on disk.

One process per adaptation (peak resident memory is a process's lifetime figure): it builds the
backbone with random weights (cost does not depend on them), adapts it as a trial does, runs
`fit` (the loop every trial uses) for one epoch of `--steps` batches of random images plus a
warm-up epoch, and saves the model as train-best delivers it.

    python bench/adaptation_cost.py                                  # RETFound-MAE ViT-L, 224 px
    python bench/adaptation_cost.py --arch vit_demo --batch-size 32  # the demo backbone

Prints JSON: one row per adaptation. Peak memory is the process's peak RSS on CPU (model,
optimiser state, activations and the Python runtime), the peak allocated memory on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from retfound_hpo.core.params import ModelConfig, TrainConfig
from retfound_hpo.model.adapters import apply_lora, set_trainable
from retfound_hpo.model.backbones import build_backbone
from retfound_hpo.model.saved import save_trained_model
from retfound_hpo.training.device import resolve_device
from retfound_hpo.training.inputs import CachedImages
from retfound_hpo.training.loop import fit

ADAPTATIONS = ("lora", "full", "linear_probe")


def one(adaptation: str, args: argparse.Namespace) -> dict:
    cfg = ModelConfig(arch=args.arch, adaptation=adaptation, input_size=args.input_size)
    torch.manual_seed(0)
    model = build_backbone(cfg, 0.1)
    if adaptation == "lora":
        model = apply_lora(model, cfg, args.lora_r, 2 * args.lora_r)
    else:
        model = set_trainable(model, adaptation)
    n = args.batch_size * args.steps
    rng = np.random.default_rng(0)
    shape = (n, cfg.input_size, cfg.input_size, 3)
    train = CachedImages(rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 5, n))
    val = CachedImages(train.images[: args.batch_size], train.grades[: args.batch_size])
    result = fit(
        model, train, val, epochs=2, batch_size=args.batch_size, learning_rate=1e-4,
        weight_decay=0.05, patience=2, metric="accuracy", cfg=TrainConfig(), seed=0,
    )  # fmt: skip
    seconds = result.history[-1]["epoch_seconds"]  # the second epoch: the first warms up
    with tempfile.TemporaryDirectory() as tmp:
        save_trained_model(model, Path(tmp) / "model", cfg, {})
        size = sum(f.stat().st_size for f in (Path(tmp) / "model").iterdir())
    return {
        "adaptation": adaptation,
        "arch": cfg.arch,
        "input_size": cfg.input_size,
        "device": str(resolve_device("auto")),
        "batch_size": args.batch_size,
        "trainable_params": result.trainable_params,
        "total_params": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": round(seconds / args.steps, 3),
        "images_per_s": round(n / seconds, 2),
        "peak_memory_mb": round(result.peak_memory_mb),
        "delivery_bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_large_patch16_224")
    parser.add_argument("--input-size", type=int, default=None, help="default: the arch's")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=list(ADAPTATIONS), choices=ADAPTATIONS)
    parser.add_argument("--one", choices=ADAPTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return
    rows = []
    argv = ["--arch", args.arch, "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    argv += ["--lora-r", str(args.lora_r)]
    if args.input_size:
        argv += ["--input-size", str(args.input_size)]
    for mode in args.modes:  # a fresh process each: its peak memory is its own
        proc = subprocess.run(
            [sys.executable, __file__, *argv, "--one", mode],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

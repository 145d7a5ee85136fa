"""Optimizer and schedule: AdamW with optional layer-wise lr decay, warmup then cosine."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
# The embeddings (layer 0; register tokens too, as timm groups them) and the tokens timm's ViTs
# name in no_weight_decay(): never weight-decayed, as in RETFound's param_groups_lrd.
EMBEDDINGS = ("patch_embed", "pos_embed", "cls_token", "reg_token")
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "reg_token", "dist_token")


def layer_id(name: str, num_blocks: int) -> int:
    """0 for the embeddings, i + 1 for block i, num_blocks + 1 for the head and its norm."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in name for part in EMBEDDINGS):
        return 0
    return num_blocks + 1


def build_optimizer(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; with layer_decay < 1, earlier blocks learn more slowly.

    As in RETFound's fine-tuning: block i gets lr * layer_decay ** (num_blocks + 1 - (i + 1)).
    Biases, norm weights and layer scales (1-d tensors) and the position embeddings and tokens
    get no weight decay.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    num_blocks = 1 + max((int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))), default=-1)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named:
        layer = layer_id(name, num_blocks)
        decay = param.ndim > 1 and name.rsplit(".", 1)[-1] not in NO_WEIGHT_DECAY
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_blocks + 1 - layer),
            },
        )
        group["params"].append(param)
    for group in groups.values():
        group["lr"] = learning_rate * group["lr_scale"]
    return torch.optim.AdamW(list(groups.values()), lr=learning_rate, fused=fused)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over warmup_steps, then cosine decay to zero at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

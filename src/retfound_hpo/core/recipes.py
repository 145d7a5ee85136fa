"""What choosing a backbone (`model.arch`) and an adaptation (`model.adaptation`) implies.

Each arch carries the input size, normalisation and patch size of its published weights, so
`model.input_size` and `model.normalization` may stay null. Each adaptation carries its training
recipe: `lora` keeps the guide's simple setup; `full` and `linear_probe` follow RETFound's
`main_finetune.py` (`finetune` and `lp`: the same recipe, lp with a frozen backbone). A params
value left null (or out) takes the recipe's value; a value given is used as given.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger(__name__)

# mean, std per channel (0-1 scale)
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # RETFound-Green's
}


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    """What a backbone's published weights were made with."""

    label: str
    input_size: int  # px of the published weights (or as RETFound fine-tunes them)
    patch_size: int
    normalization: str  # a NORMALIZATIONS key
    # Whether another input size may resample the weights' position grid (a stated override);
    # False: another size is refused.
    resizable: bool = True


ARCHS = {
    "vit_demo": ArchInfo("the demo backbone (ViT, dim 192, depth 4, MAE-pretrained here)", 96, 16,
                         "imagenet"),
    "vit_large_patch16_224": ArchInfo("RETFound-MAE (ViT-L/16)", 224, 16, "imagenet"),
    "vit_large_patch14_dinov2": ArchInfo("RETFound-DINOv2 (ViT-L/14)", 224, 14, "imagenet"),
    # Trained at 392 px only (28 x 28 patches); released as a plain timm state dict.
    "vit_small_patch14_reg4_dinov2": ArchInfo(
        "RETFound-Green (ViT-S/14, 4 registers)", 392, 14, "inception", resizable=False
    ),
    # Meta's DINOv3 ViT-L/16 (timm's Eva class, RoPE: no position grid to resample); RETFound's
    # code fine-tunes it at 224 px with ImageNet statistics.
    "vit_large_patch16_dinov3": ArchInfo("DINOv3 ViT-L/16", 224, 16, "imagenet"),
}  # fmt: skip

ADAPTATIONS = ("lora", "full", "linear_probe")

# RETFound's finetune recipe: layer decay 0.65, drop path 0.2, warm-up (10 of 50 epochs; 2 of the
# demo's 12), label smoothing 0.1, RandAugment (rand-m9-mstd0.5-inc1) and random erasing 0.25.
# Its lp runs the same recipe with only the head trainable (layer decay then moves nothing).
_RETFOUND = {
    "model.drop_path_rate": 0.2,
    "train.warmup_epochs": 2,
    "train.label_smoothing": 0.1,
    "train.augment": "randaugment",
    "train.random_erasing": 0.25,
}
RECIPES: dict[str, dict[str, Any]] = {
    "lora": {
        "model.drop_path_rate": 0.1,
        "train.warmup_epochs": 0,
        "train.label_smoothing": 0.0,
        "train.layer_decay": 1.0,
        "train.augment": "basic",
        "train.random_erasing": 0.0,
    },
    "full": {**_RETFOUND, "train.layer_decay": 0.65},
    "linear_probe": {**_RETFOUND, "train.layer_decay": 1.0},
}


def recipe_value(adaptation: str, key: str) -> Any:
    """The recipe's value of `key` ("train.layer_decay", ...) for an adaptation."""
    return RECIPES[adaptation if adaptation in RECIPES else "lora"][key]


def fill_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's mapping with every recipe key that is null or absent set from the arch and
    the adaptation it names (unknown names are left for the type checks to refuse)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("model") or {}, dict):
        return raw  # the type checks name what is wrong
    raw, model = dict(raw), dict(raw.get("model") or {})
    adaptation = model.get("adaptation") or "lora"
    sections = {"model": model}
    for key, value in RECIPES.get(adaptation, RECIPES["lora"]).items():
        section, name = key.split(".")
        if section not in sections:
            current = raw.get(section) or {}
            if not isinstance(current, dict):
                continue
            sections[section] = dict(current)
        if sections[section].get(name) is None:
            sections[section][name] = value
    raw.update(sections)
    return raw


def arch_defaults(arch: str, input_size: int | None, normalization: str | None) -> tuple:
    """(input size, normalisation): those given, else the arch's own."""
    info = ARCHS.get(arch)
    if info is None:
        return input_size, normalization
    return (
        info.input_size if input_size is None else input_size,
        info.normalization if normalization is None else normalization,
    )


def log_overrides(arch: str, input_size: int, normalization: str) -> None:
    """Say so where a params value overrides what the arch's weights were made with."""
    info = ARCHS.get(arch)
    if info is None:
        return
    if input_size != info.input_size and info.resizable:
        log.warning(
            "model.input_size %d overrides %s's %d px: its position embeddings are resampled "
            "to the new grid",
            *(input_size, info.label, info.input_size),
        )
    if normalization != info.normalization:
        log.warning(
            "model.normalization %s overrides %s's %s mean/std",
            *(normalization, info.label, info.normalization),
        )

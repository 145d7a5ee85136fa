"""Build the timm ViT, load a RETFound checkpoint into it, and wrap it with PEFT LoRA."""

from __future__ import annotations

import argparse
import json
import logging
from functools import partial
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retfound_hpo.config import ModelConfig

log = logging.getLogger(__name__)

# Architectures by name: vit_large_patch16_224 is RETFound's; vit_demo is the demo backbone.
ARCH_KWARGS = {
    "vit_demo": dict(patch_size=16, embed_dim=192, depth=4, num_heads=3, mlp_ratio=4.0),
    "vit_large_patch16_224": dict(
        patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0
    ),
}
# What a RETFound MAE checkpoint may lack (the classifier) or carry besides the encoder.
ALLOWED_MISSING = ("head.", "fc_norm.")
ALLOWED_UNEXPECTED = ("norm.", "mask_token", "decoder_")
MODEL_CONFIG_FILE = "model_config.json"


class CheckpointError(ValueError):
    """The checkpoint does not fit the chosen architecture."""


def build_backbone(cfg: ModelConfig, dropout: float = 0.0) -> VisionTransformer:
    """The ViT as RETFound fine-tunes it: mean-pooled patch tokens, fc_norm, dropout, head."""
    return VisionTransformer(
        img_size=cfg.input_size,
        num_classes=cfg.num_classes,
        global_pool="avg",  # mean of patch tokens (CLS excluded), then fc_norm
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=cfg.drop_path_rate,
        drop_rate=dropout,  # timm applies drop_rate only as head_drop, right before the head
        **ARCH_KWARGS[cfg.arch],
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Encoder weights from a RETFound file (MAE `model`, DINOv2 `teacher`) or a state dict."""
    # weights_only with an explicit allow-list: fine-tuned RETFound files pickle an argparse
    # Namespace; nothing else outside tensors and containers may be unpickled.
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "model" in ckpt and isinstance(ckpt["model"], dict):
        state = ckpt["model"]
    elif "teacher" in ckpt and isinstance(ckpt["teacher"], dict):
        state = {k.removeprefix("backbone."): v for k, v in ckpt["teacher"].items()}
    else:
        state = ckpt
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: no state dict under 'model' or 'teacher'; top-level keys: {list(ckpt)[:8]}"
        )
    return {k: v.float() for k, v in state.items()}


def load_retfound_checkpoint(model: VisionTransformer, path: str | Path) -> None:
    """Load RETFound encoder weights into `model`, checking every key and shape."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: {path} not found")
    state = _read_state_dict(path)
    own = model.state_dict()
    # A fine-tuned checkpoint's head belongs to another task: start it fresh, as RETFound does.
    for key in ("head.weight", "head.bias"):
        if key in state and state[key].shape != own[key].shape:
            del state[key]
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=list(grid), num_prefix_tokens=1, interpolation="bicubic"
        )
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state and not k.startswith(ALLOWED_MISSING)]
    unexpected = [k for k in state if k not in own and not k.startswith(ALLOWED_UNEXPECTED)]
    if wrong_shape or missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit model.arch; wrong shapes: {wrong_shape[:3]}, "
            f"missing: {missing[:3]}, unexpected: {unexpected[:3]} "
            "(wrong model.arch or wrong file?)"
        )
    result = model.load_state_dict(state, strict=False)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)  # as the official fine-tuning code
    log.info(
        "loaded %s (%d tensors; fresh: %s)",
        path,
        len(state) - len(result.unexpected_keys),
        sorted({k.split(".")[0] for k in result.missing_keys}),
    )


def build_model(
    cfg: ModelConfig,
    lora_r: int,
    lora_alpha: int,
    dropout: float,
    checkpoint: str | Path | None = None,
) -> PeftModel:
    """Backbone + RETFound weights + LoRA on `cfg.lora_targets`; head and fc_norm trainable."""
    model = build_backbone(cfg, dropout)
    load_retfound_checkpoint(model, checkpoint or cfg.checkpoint)
    lora = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        target_modules=list(cfg.lora_targets),
        lora_dropout=cfg.lora_dropout,
        modules_to_save=["head", "fc_norm"],
    )
    return get_peft_model(model, lora)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_trained_model(
    model: PeftModel, out_dir: str | Path, cfg: ModelConfig, hparams: dict
) -> None:
    """Save the LoRA adapter (with head and fc_norm) and what is needed to rebuild the model."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    config = {
        "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "hparams": hparams,
    }
    (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2))


def load_trained_model(model_dir: str | Path) -> tuple[PeftModel, dict]:
    """Rebuild a model saved by `save_trained_model`; returns it in eval mode with its config."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / MODEL_CONFIG_FILE).read_text())
    raw = config["model"]
    cfg = ModelConfig(**{**raw, "lora_targets": tuple(raw["lora_targets"])})
    backbone = build_backbone(cfg, config["hparams"].get("dropout", 0.0))
    load_retfound_checkpoint(backbone, cfg.checkpoint)
    model = PeftModel.from_pretrained(backbone, model_dir)
    return model.eval(), config

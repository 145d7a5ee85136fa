"""Build the timm ViT, load a RETFound checkpoint into it, and wrap it with PEFT LoRA."""

from __future__ import annotations

import argparse
import json
import logging
import re
from functools import partial
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retfound_hpo.config import ModelConfig
from retfound_hpo.errors import CheckpointError

log = logging.getLogger(__name__)

# Architectures by name: vit_large_patch16_224 is RETFound-MAE's; vit_large_patch14_dinov2 is
# RETFound-DINOv2's, as timm defines it (layer scale ls1/ls2 from 1e-5, plain MLP, no register
# tokens); vit_demo is the demo backbone.
ARCH_KWARGS = {
    "vit_demo": dict(patch_size=16, embed_dim=192, depth=4, num_heads=3, mlp_ratio=4.0),
    "vit_large_patch16_224": dict(
        patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0
    ),
    "vit_large_patch14_dinov2": dict(
        patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, init_values=1e-5
    ),
}
# What a RETFound MAE checkpoint may lack (the classifier) or carry besides the encoder.
ALLOWED_MISSING = ("head.", "fc_norm.")
ALLOWED_UNEXPECTED = ("norm.", "mask_token", "decoder_")
MODEL_CONFIG_FILE = "model_config.json"


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


# DINOv2 names -> timm names, as RETFound's fine-tuning code renames them (w12/w3 are DINOv2's
# SwiGLU layers, fc1/fc2 timm's packed SwiGLU and plain MLP).
DINOV2_RENAMES = (("mlp.w12.", "mlp.fc1."), ("mlp.w3.", "mlp.fc2."))
# DINOv2 trained with block chunks (FSDP) saves block 7 as `blocks.1.7.`; timm has `blocks.7.`.
BLOCK_CHUNK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _timm_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint keys under timm's names: no DDP `module.` prefix, DINOv2 renames, no chunks."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for old, new in DINOV2_RENAMES:
            key = key.replace(old, new)
        out[BLOCK_CHUNK.sub(r"blocks.\1.", key)] = value
    return out


def _dinov2_backbone(teacher: dict) -> dict:
    """The encoder of a DINOv2 `teacher`: its `backbone.` keys, not the dino/ibot heads."""
    if not any(k.startswith("backbone.") for k in teacher):
        return teacher
    return {k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Encoder weights from a RETFound file (MAE `model`, DINOv2 `teacher`) or a state dict."""
    # weights_only with an explicit allow-list: fine-tuned RETFound files pickle an argparse
    # Namespace; nothing else outside tensors and containers may be unpickled.
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, got {type(ckpt).__name__}")
    if "model" in ckpt and isinstance(ckpt["model"], dict):
        state = ckpt["model"]
    elif "teacher" in ckpt and isinstance(ckpt["teacher"], dict):
        state = _dinov2_backbone(ckpt["teacher"])
    else:
        state = ckpt
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: no state dict under 'model' or 'teacher'; top-level keys: {list(ckpt)[:8]}"
        )
    return {k: v.float() for k, v in _timm_names(state).items()}


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


# Short LoRA target names, qualified so that "proj" means attention's, not patch_embed.proj.
LORA_TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def build_model(
    cfg: ModelConfig,
    lora_r: int,
    lora_alpha: int,
    dropout: float,
    checkpoint: str | Path | None = None,
    lora_dropout: float | None = None,
    lora_targets: list[str] | tuple[str, ...] | None = None,
) -> PeftModel:
    """Backbone + RETFound weights + LoRA (on `cfg.lora_targets` unless given); head and
    fc_norm trainable."""
    model = build_backbone(cfg, dropout)
    load_retfound_checkpoint(model, checkpoint or cfg.checkpoint)
    return apply_lora(model, cfg, lora_r, lora_alpha, lora_dropout, lora_targets)


def apply_lora(
    model: VisionTransformer,
    cfg: ModelConfig,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float | None = None,
    lora_targets: list[str] | tuple[str, ...] | None = None,
) -> PeftModel:
    """Wrap a backbone with LoRA adapters; only they, the head and fc_norm train."""
    targets = [LORA_TARGETS.get(t.strip(), t.strip()) for t in (lora_targets or cfg.lora_targets)]
    lora = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        lora_dropout=cfg.lora_dropout if lora_dropout is None else lora_dropout,
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

"""LoRA adapters (PEFT) on a backbone loaded with RETFound's weights; what trains beside them."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.backbones import POOLING, build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint

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
    """Backbone + RETFound weights + LoRA (on `cfg.lora_targets` unless given); head and the
    pooling's norm trainable."""
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
    """Wrap a backbone with LoRA adapters; only they, the head and fc_norm (MAE) or the final
    norm (DINOv2) train."""
    targets = [LORA_TARGETS.get(t.strip(), t.strip()) for t in (lora_targets or cfg.lora_targets)]
    lora = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        lora_dropout=cfg.lora_dropout if lora_dropout is None else lora_dropout,
        modules_to_save=list(POOLING[cfg.arch].trainable),
    )
    return get_peft_model(model, lora)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""The three adaptations of a backbone loaded with RETFound's weights (`model.adaptation`):

lora          LoRA adapters (PEFT) + the head and the pooling's norm; the rest frozen
full          every weight trains (RETFound's `finetune`)
linear_probe  only the head trains, on a frozen backbone (RETFound's `lp`: not even fc_norm)
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.backbones import POOLING, build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint

# Short LoRA target names, qualified so that "proj" means attention's, not patch_embed.proj.
LORA_TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def build_model(
    cfg: ModelConfig,
    lora_r: int = 8,
    lora_alpha: int = 16,
    dropout: float = 0.0,
    checkpoint: str | Path | None = None,
    lora_dropout: float | None = None,
    lora_targets: list[str] | tuple[str, ...] | None = None,
) -> nn.Module:
    """Backbone + RETFound weights, adapted as `cfg.adaptation` says; the LoRA arguments apply
    to lora only (targets: `cfg.lora_targets` unless given)."""
    model = build_backbone(cfg, dropout)
    load_retfound_checkpoint(model, checkpoint or cfg.checkpoint)
    if cfg.adaptation == "lora":
        return apply_lora(model, cfg, lora_r, lora_alpha, lora_dropout, lora_targets)
    return set_trainable(model, cfg.adaptation)


def apply_lora(
    model: nn.Module,
    cfg: ModelConfig,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float | None = None,
    lora_targets: list[str] | tuple[str, ...] | None = None,
) -> PeftModel:
    """Wrap a backbone with LoRA adapters; only they, the head and fc_norm (MAE) or the final
    norm (DINOv2, DINOv3, RETFound-Green) train."""
    targets = [LORA_TARGETS.get(t.strip(), t.strip()) for t in (lora_targets or cfg.lora_targets)]
    lora = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        lora_dropout=cfg.lora_dropout if lora_dropout is None else lora_dropout,
        modules_to_save=list(POOLING[cfg.arch].trainable),
    )
    return get_peft_model(model, lora)


def set_trainable(model: nn.Module, adaptation: str) -> nn.Module:
    """full: every parameter trains; linear_probe: `head.*` alone, as RETFound's lp (a fresh
    fc_norm stays at its LayerNorm initialisation, a pretrained norm as loaded)."""
    for name, param in model.named_parameters():
        param.requires_grad = adaptation == "full" or name.startswith("head.")
    return model


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

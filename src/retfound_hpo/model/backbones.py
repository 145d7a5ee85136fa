"""The backbones by name, built as RETFound fine-tunes each one: timm's VisionTransformer (the
demo, RETFound-MAE, RETFound-DINOv2, RETFound-Green) or timm's Eva (DINOv3), with its pooling
and the normalisation of its published weights (core.recipes.ARCHS has the plain facts)."""

from __future__ import annotations

import dataclasses
from functools import partial

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retfound_hpo.core.params import ModelConfig
from retfound_hpo.core.recipes import NORMALIZATIONS

# Architectures by name: vit_large_patch16_224 is RETFound-MAE's; vit_large_patch14_dinov2 is
# RETFound-DINOv2's, as timm defines it (layer scale ls1/ls2 from 1e-5, plain MLP, no register
# tokens); vit_small_patch14_reg4_dinov2 is RETFound-Green's (4 register tokens, a position grid
# of patches only); vit_demo is the demo backbone. vit_large_patch16_dinov3 is built by timm
# (TIMM_BUILT) from its own model args, these given on top (tests shrink them for stand-ins).
ARCH_KWARGS = {
    "vit_demo": dict(patch_size=16, embed_dim=192, depth=4, num_heads=3, mlp_ratio=4.0),
    "vit_large_patch16_224": dict(
        patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0
    ),
    "vit_large_patch14_dinov2": dict(
        patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, init_values=1e-5
    ),
    "vit_small_patch14_reg4_dinov2": dict(
        patch_size=14,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        init_values=1e-5,
        reg_tokens=4,
        no_embed_class=True,
    ),
    "vit_large_patch16_dinov3": dict(embed_dim=1024, depth=24, num_heads=16),
}
# Built with timm.create_model (Eva: RoPE, no pos_embed, layer scale gamma_1/gamma_2).
TIMM_BUILT = ("vit_large_patch16_dinov3",)


@dataclasses.dataclass(frozen=True)
class Pooling:
    """How a ViT feeds its head, as RETFound fine-tunes it, and what its checkpoint holds."""

    global_pool: str  # timm's global_pool
    trainable: tuple[str, ...]  # trained in full beside LoRA (PEFT modules_to_save)
    fresh: tuple[str, ...]  # key prefixes the checkpoint lacks: initialised here
    ignored: tuple[str, ...]  # key prefixes the checkpoint may carry that the model does not use
    fc_norm: bool | None = None  # timm's fc_norm (None: timm's default for global_pool)


# RETFound-MAE: mean of the patch tokens (CLS excluded) through a fresh fc_norm; the MAE file's
# final `norm`, mask_token and decoder are left out.
MEAN_OF_PATCHES = Pooling(
    "avg", ("head", "fc_norm"), ("head.", "fc_norm."), ("norm.", "mask_token", "decoder_")
)
# RETFound-DINOv2 keeps timm's default: the CLS token through the pretrained final `norm`, which
# must be in the file. PEFT picks modules_to_save by name suffix, so "norm" also wraps the
# parameter-free nn.Identity slots named *norm (attn.q_norm, mlp.norm, fc_norm...): nothing there
# to train or save, and merge_and_unload unwraps them. RETFound's code fine-tunes DINOv3 the same
# way (the CLS token after the final norm), where timm would average the patches.
CLASS_TOKEN = Pooling("token", ("head", "norm"), ("head.",), ("mask_token",))
# RETFound-Green: mean of the patch tokens (CLS and registers excluded) through the pretrained
# final `norm`. timm's plain global_pool="avg" would swap that norm for a fresh fc_norm and the
# released file would no longer fit; fc_norm=False keeps it.
MEAN_THROUGH_NORM = Pooling("avg", ("head", "norm"), ("head.",), (), fc_norm=False)
POOLING = {
    "vit_demo": MEAN_OF_PATCHES,
    "vit_large_patch16_224": MEAN_OF_PATCHES,
    "vit_large_patch14_dinov2": CLASS_TOKEN,
    "vit_small_patch14_reg4_dinov2": MEAN_THROUGH_NORM,
    "vit_large_patch16_dinov3": CLASS_TOKEN,
}


def build_backbone(cfg: ModelConfig, dropout: float = 0.0) -> nn.Module:
    """The ViT as RETFound fine-tunes it: its arch's pooling (POOLING), dropout, head. Its
    `pretrained_cfg` (timm's convention) names the arch and the input normalisation."""
    pooling = POOLING[cfg.arch]
    if cfg.arch in TIMM_BUILT:
        model = timm.create_model(
            cfg.arch,
            pretrained=False,
            img_size=cfg.input_size,
            num_classes=cfg.num_classes,
            global_pool=pooling.global_pool,
            drop_path_rate=cfg.drop_path_rate,
            drop_rate=dropout,
            **ARCH_KWARGS[cfg.arch],
        )
    else:
        model = VisionTransformer(
            img_size=cfg.input_size,
            num_classes=cfg.num_classes,
            global_pool=pooling.global_pool,
            fc_norm=pooling.fc_norm,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            drop_path_rate=cfg.drop_path_rate,
            drop_rate=dropout,  # timm applies drop_rate only as head_drop, right before the head
            **ARCH_KWARGS[cfg.arch],
        )
    mean, std = NORMALIZATIONS[cfg.normalization]
    model.pretrained_cfg = {
        **(getattr(model, "pretrained_cfg", None) or {}),
        "architecture": cfg.arch,
        "input_size": (3, cfg.input_size, cfg.input_size),
        "mean": mean,
        "std": std,
    }
    return model


def arch_of(model: nn.Module) -> str | None:
    """The arch a backbone was built as (None for one not built by build_backbone)."""
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture")

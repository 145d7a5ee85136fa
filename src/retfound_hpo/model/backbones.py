"""The ViT backbones by name: timm's VisionTransformer as RETFound fine-tunes each one."""

from __future__ import annotations

import dataclasses
from functools import partial

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retfound_hpo.core.params import ModelConfig

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


@dataclasses.dataclass(frozen=True)
class Pooling:
    """How a ViT feeds its head, as RETFound fine-tunes it, and what its checkpoint holds."""

    global_pool: str  # timm's global_pool
    trainable: tuple[str, ...]  # trained in full beside LoRA (PEFT modules_to_save)
    fresh: tuple[str, ...]  # key prefixes the checkpoint lacks: initialised here
    ignored: tuple[str, ...]  # key prefixes the checkpoint may carry that the model does not use


# RETFound-MAE: mean of the patch tokens (CLS excluded) through a fresh fc_norm; the MAE file's
# final `norm`, mask_token and decoder are left out.
MEAN_OF_PATCHES = Pooling(
    "avg", ("head", "fc_norm"), ("head.", "fc_norm."), ("norm.", "mask_token", "decoder_")
)
# RETFound-DINOv2 keeps timm's default: the CLS token through the pretrained final `norm`, which
# must be in the file. PEFT picks modules_to_save by name suffix, so "norm" also wraps the
# parameter-free nn.Identity slots named *norm (attn.q_norm, mlp.norm, fc_norm...): nothing there
# to train or save, and merge_and_unload unwraps them.
CLASS_TOKEN = Pooling("token", ("head", "norm"), ("head.",), ("mask_token",))
POOLING = {
    "vit_demo": MEAN_OF_PATCHES,
    "vit_large_patch16_224": MEAN_OF_PATCHES,
    "vit_large_patch14_dinov2": CLASS_TOKEN,
}


def build_backbone(cfg: ModelConfig, dropout: float = 0.0) -> VisionTransformer:
    """The ViT as RETFound fine-tunes it: its arch's pooling (POOLING), dropout, head."""
    return VisionTransformer(
        img_size=cfg.input_size,
        num_classes=cfg.num_classes,
        global_pool=POOLING[cfg.arch].global_pool,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=cfg.drop_path_rate,
        drop_rate=dropout,  # timm applies drop_rate only as head_drop, right before the head
        **ARCH_KWARGS[cfg.arch],
    )

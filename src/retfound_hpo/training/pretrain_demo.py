"""Label-free MAE pretraining of the demo backbone, saved in RETFound's checkpoint layout.

RETFound is a masked autoencoder (He et al. 2022) trained on unlabelled retinal photos. The demo
backbone is the same recipe at toy scale: hide 75 % of the patches, reconstruct their normalised
pixels, keep the encoder. The file holds `{"model": state_dict}` with MAE's key names (encoder,
`norm.*`, `mask_token`, `decoder_*`), so it loads through `load_retfound_checkpoint` exactly as
`RETFound_cfp_weights.pth` does.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from tqdm import tqdm

from retfound_hpo.core.params import ModelConfig
from retfound_hpo.data.demo.synthetic import write_demo_datasets
from retfound_hpo.data.formats import read_dataset
from retfound_hpo.data.preprocess import prepare_images
from retfound_hpo.model.backbones import ARCH_KWARGS
from retfound_hpo.training.inputs import Normalizer, load_cached

log = logging.getLogger(__name__)


class MaskedAutoencoder(nn.Module):
    """A timm ViT encoder with MAE's random masking and a small transformer decoder."""

    def __init__(
        self,
        cfg: ModelConfig,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
    ):
        super().__init__()
        # global_pool="token" keeps the final `norm` that MAE checkpoints carry (no fc_norm).
        self.encoder = VisionTransformer(
            img_size=cfg.input_size,
            num_classes=0,
            global_pool="token",
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            **ARCH_KWARGS[cfg.arch],
        )
        dim, patches = self.encoder.embed_dim, self.encoder.patch_embed.num_patches
        self.patch = self.encoder.patch_embed.patch_size[0]
        self.mask_ratio = mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, patches + 1, decoder_dim) * 0.02)
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_dim,
                decoder_heads,
                mlp_ratio=4.0,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch**2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, p*p*3)"""
        p = self.patch
        b, c, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, imgs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mean squared error of reconstructed, per-patch normalised pixels of hidden patches."""
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]  # (B, N, D)
        b, n, d = x.shape
        keep = int(n * (1 - self.mask_ratio))
        noise = torch.rand(b, n, generator=generator).to(x.device)
        shuffle = noise.argsort(dim=1)  # random permutation per image
        restore = shuffle.argsort(dim=1)
        visible = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, d))  # (B, keep, D)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        z = enc.norm(enc.blocks(torch.cat([cls, visible], dim=1)))  # (B, 1+keep, D)

        z = self.decoder_embed(z)  # (B, 1+keep, Dd)
        masked = self.mask_token.expand(b, n - keep, -1)
        tokens = torch.cat([z[:, 1:], masked], dim=1)  # in shuffled order
        tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, z.shape[2]))
        z = torch.cat([z[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            z = block(z)
        pred = self.decoder_pred(self.decoder_norm(z))[:, 1:]  # (B, N, p*p*3)

        target = self.patchify(imgs)
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True) + 1e-6
        ).sqrt()
        hidden = torch.ones(b, n, device=x.device)
        hidden[:, :keep] = 0
        hidden = torch.gather(hidden, 1, restore)  # 1 where the patch was masked
        loss = ((pred.float() - target) ** 2).mean(-1)
        return (loss * hidden).sum() / hidden.sum()

    def retfound_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder keys without prefix plus MAE's decoder keys, as in RETFound's file."""
        state = {k.removeprefix("encoder."): v for k, v in self.state_dict().items()}
        return {k: v.detach().clone() for k, v in state.items()}


def pretrain_demo_backbone(
    out_path: str | Path,
    n_images: int = 4000,
    epochs: int = 25,
    batch_size: int = 128,
    lr: float = 1.5e-3,
    seed: int = 2024,
    lesion_scale: float = 2.0,
    cfg: ModelConfig | None = None,
) -> dict[str, float]:
    """Generate unlabelled demo images (camera A only), pretrain an MAE on them, save the file."""
    cfg = cfg or ModelConfig()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        # A seed of its own: the pretraining images are not the pipeline's train/val/test images.
        dirs = write_demo_datasets(
            Path(tmp) / "demo",
            n_domain_a=n_images,
            n_domain_b=0,
            seed=seed,
            lesion_scale=lesion_scale,
        )
        table = read_dataset("aptos", dirs["aptos"] / "train.csv", dirs["aptos"] / "train_images")
        data = load_cached(prepare_images(table, Path(tmp) / "prepared", cfg.input_size))
        images = torch.from_numpy(data.images[:]).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8

    model = MaskedAutoencoder(cfg)
    normalize = Normalizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    steps = epochs * math.ceil(len(images) / batch_size)
    warmup = steps // 10
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.perf_counter(), []
    for epoch in tqdm(range(epochs), desc="MAE pretraining", disable=None):
        order = torch.randperm(len(images), generator=generator)
        epoch_loss = 0.0
        for i in range(0, len(images), batch_size):
            x = normalize(images[order[i : i + batch_size]])
            x = torch.where(torch.rand(1, generator=generator) < 0.5, x.flip(3), x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item() * len(x)
        losses.append(epoch_loss / len(images))
        log.info("epoch %d/%d reconstruction loss %.4f", epoch + 1, epochs, losses[-1])

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # fp16 halves the committed file; the loader casts back to float32.
    state = {k: v.half() for k, v in model.retfound_state_dict().items()}
    torch.save(
        {
            "model": state,
            "pretrain": {
                "lesion_scale": lesion_scale,
                "images": n_images,
                "epochs": epochs,
                "seed": seed,
                "final_loss": losses[-1],
            },
        },
        out_path,
    )
    return {
        "seconds": time.perf_counter() - start,
        "first_loss": losses[0],
        "final_loss": losses[-1],
    }

"""What the training loop reads: prepared images as a dataset, their normalisation, augmentation
and the training batches (class-balanced sampling where asked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision import transforms

from retfound_hpo.core.params import TrainConfig
from retfound_hpo.data.prepared import load_prepared


class CachedImages(Dataset):
    """Prepared images (N, S, S, 3) uint8 (an array, or PreparedImages read on demand) with
    their grades."""

    def __init__(self, images: np.ndarray, grades: np.ndarray, transform=None):
        self.images, self.grades = images, np.asarray(grades, dtype=np.int64)
        self.transform = transform  # per-image, on the uint8 tensor (training only)

    def __len__(self) -> int:
        return len(self.grades)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # (3, S, S) uint8
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.grades[i])


def load_cached(folder: str | Path) -> CachedImages:
    """A prepared set (see data.preprocess) as a dataset."""
    images, index = load_prepared(folder)
    return CachedImages(images, index["grade"].to_numpy())


class Normalizer(nn.Module):
    """uint8 (B, 3, S, S) on any device -> float normalised by mean and std (0-1 scale; default
    ImageNet's)."""

    def __init__(self, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def normalizer_for(model: nn.Module) -> Normalizer:
    """The normalisation of the backbone's weights, from its timm `pretrained_cfg` (set by
    model.build_backbone from the arch or model.normalization); ImageNet's otherwise."""
    for module in model.modules():  # a PEFT wrapper holds the backbone
        cfg = module.__dict__.get("pretrained_cfg")
        if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
            return Normalizer(cfg["mean"], cfg["std"])
    return Normalizer()


def random_erase(x: torch.Tensor, probability: float) -> torch.Tensor:
    """RETFound's random erasing (timm's mode "pixel"): per image, with `probability`, a
    rectangle of 2-33 % of the area, aspect 0.3-3.3, replaced by normal noise, on a normalised
    batch (B, 3, S, S); drawn from torch's generator (seeded by the training loop)."""
    if probability <= 0:
        return x
    erase = transforms.RandomErasing(p=probability, value="random")
    return torch.stack([erase(image) for image in x])


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random flips and brightness/contrast jitter on a normalised batch (B, 3, S, S)."""
    b = x.shape[0]
    rand = torch.rand(b, 4, generator=generator).to(x.device)
    x = torch.where(rand[:, 0].view(b, 1, 1, 1) < 0.5, x.flip(3), x)  # left/right eye mirror
    x = torch.where(rand[:, 1].view(b, 1, 1, 1) < 0.5, x.flip(2), x)
    contrast = (0.8 + 0.4 * rand[:, 2]).view(b, 1, 1, 1)
    brightness = (rand[:, 3] - 0.5).view(b, 1, 1, 1) * 0.4
    return x * contrast + brightness


def train_loader(
    data: CachedImages,
    batch_size: int,
    cfg: TrainConfig,
    seed: int,
    num_classes: int,
    device: torch.device,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if cfg.class_balance == "sampler":
        counts = np.bincount(data.grades, minlength=num_classes).clip(min=1)
        weights = torch.as_tensor(1.0 / counts[data.grades], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, len(data), generator=generator)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=cfg.num_workers,
        drop_last=len(data) > batch_size,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )

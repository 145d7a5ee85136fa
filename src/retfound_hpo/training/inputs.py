"""What the training loop reads: prepared images as a dataset, their normalisation, augmentation
and the training batches (class-balanced sampling where asked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

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
    """uint8 (B, 3, S, S) on any device -> ImageNet-normalised float."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


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

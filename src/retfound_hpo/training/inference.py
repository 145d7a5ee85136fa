"""Class probabilities of prepared images: validation in the loop, evaluation and grading."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from retfound_hpo.training.device import autocast, autocast_dtype
from retfound_hpo.training.inputs import CachedImages, normalizer_for


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 128,
    device: torch.device | None = None,
    amp: str = "auto",
    desc: str = "predict",
) -> np.ndarray:
    """Class probabilities (N, C) for prepared images (N, S, S, 3) uint8, normalised as the
    model's backbone expects."""
    device = device or next(model.parameters()).device
    dtype = autocast_dtype(amp, device)
    normalize = normalizer_for(model).to(device)
    model.eval()
    loader = DataLoader(CachedImages(images, np.zeros(len(images))), batch_size=batch_size)
    out = []
    for x, _ in tqdm(loader, desc=desc, leave=False, disable=None):
        with autocast(device, dtype):
            logits = model(normalize(x.to(device, non_blocking=True)))  # (B, C)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy()

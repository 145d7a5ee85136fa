"""Loading RETFound's pretrained weights into a backbone: file checks, key layouts, shapes."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.model.backbones import POOLING

log = logging.getLogger(__name__)


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


# How torch.save's files begin: a zip archive (since torch 1.6), or the older pickle protocol 2
# stream that opens with torch's magic number.
TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def _unloadable(path: Path, head: bytes, err: Exception) -> CheckpointError:
    """Name what a file torch.load refused most likely is. Never repeat torch's advice to retry
    with weights_only=False: unrestricted unpickling of a downloaded file runs its code."""
    detail = str(err).split("WeightsUnpickler error:")[-1].strip()
    if name := re.search(r"GLOBAL [\w.]+", detail):
        return CheckpointError(
            f"{path}: holds Python objects other than tensors ({name.group()}); "
            "RETFound checkpoints are loaded with weights_only=True"
        )
    detail = detail.split("\n")[0].split(". ")[0].rstrip(".")
    if not detail or "weights_only" in detail:
        detail = type(err).__name__
    if head.startswith(TORCH_MAGIC) or isinstance(err, EOFError):
        return CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({detail}); download it again"
        )
    return CheckpointError(
        f"{path}: not a PyTorch checkpoint ({detail}); model.checkpoint must be RETFound's .pth"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Encoder weights from a RETFound file (MAE `model`, DINOv2 `teacher`) or a state dict."""
    try:
        with path.open("rb") as file:
            head = file.read(512)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint; download it again")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):  # markup: HTML, or XML
        raise CheckpointError(
            f"{path}: an HTML page, not a checkpoint (a download that saved a login or error "
            "page?); download the weights again"
        )
    # weights_only with an explicit allow-list: fine-tuned RETFound files pickle an argparse
    # Namespace; nothing else outside tensors and containers may be unpickled.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged files raise RuntimeError, OSError, EOFError, Unpickling...
        raise _unloadable(path, head, err) from None
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
    if path.is_dir():
        raise CheckpointError(
            f"{path}: a folder, not a checkpoint file; set model.checkpoint to the .pth in it"
        )
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: {path} not found")
    pooling = next(p for p in POOLING.values() if p.global_pool == model.global_pool)
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
    missing = [k for k in own if k not in state and not k.startswith(pooling.fresh)]
    unexpected = [k for k in state if k not in own and not k.startswith(pooling.ignored)]
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

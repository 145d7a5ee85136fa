"""Loading RETFound's pretrained weights into a backbone: file checks, key layouts, shapes.

Layouts: RETFound-MAE (`model`), RETFound-DINOv2 (`teacher`, `backbone.`, maybe block chunks),
RETFound-Green and timm files (a plain state dict), and Meta's DINOv3 release (a plain state
dict with `storage_tokens`, `ls1.gamma`, RoPE periods), converted by timm's own Eva filter.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import eva
from torch import nn

from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.core.recipes import ARCHS
from retfound_hpo.model.backbones import POOLING, Pooling, arch_of, build_backbone

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


def _from_meta_dinov3(state: dict, model: nn.Module, path: Path) -> dict:
    """Meta's DINOv3 release under timm's Eva names (timm's filter: storage_tokens -> reg_token,
    ls1.gamma -> gamma_1, RoPE periods, bias masks and mask_token dropped). Its qkv biases are
    zero in the distilled ViT-L; timm's vit_large_patch16_dinov3 has none, so a non-zero one
    would be lost: refused."""
    if "storage_tokens" not in state:
        return state
    biases = [k for k in state if k.endswith("attn.qkv.bias")]
    if biases and "blocks.0.attn.q_bias" not in model.state_dict():
        if nonzero := [k for k in biases if state[k].abs().max() > 0]:
            raise CheckpointError(
                f"{path}: {nonzero[0]} is not zero, but model.arch {arch_of(model)} has no "
                "qkv bias (a DINOv3 file of another kind?)"
            )
        state = {k: v for k, v in state.items() if k not in biases}
    return eva.checkpoint_filter_fn(state, model)


def _resampled_pos_embed(pos: torch.Tensor, model: nn.Module, path: Path) -> torch.Tensor:
    """The checkpoint's position embeddings on the model's grid (bicubic, as RETFound), where
    the arch allows it; one that does not (RETFound-Green) refuses another grid."""
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    grid = list(model.patch_embed.grid_size)
    if math.isqrt(pos.shape[1] - prefix) ** 2 != pos.shape[1] - prefix:
        return pos  # no square grid behind this model's prefix: another arch's, named below
    info = ARCHS.get(arch_of(model) or "")
    if info is not None and not info.resizable:
        side = math.isqrt(pos.shape[1] - prefix) * info.patch_size
        raise CheckpointError(
            f"{path}: its position grid is for {side} px, but {info.label} takes its released "
            f"{info.input_size} px weights (model.input_size {grid[0] * info.patch_size}); "
            "wrong file for model.checkpoint?"
        )
    log.info("resampling %s's position embeddings to a %dx%d grid", path, *grid)
    return resample_abs_pos_embed(
        pos, new_size=grid, num_prefix_tokens=prefix, interpolation="bicubic"
    )


def _mismatch(state: dict, own: dict, pooling: Pooling, grid: bool = True) -> tuple[list, ...]:
    """(wrong shapes, missing keys, unexpected keys) of `state` against a model's `own`."""
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape and (grid or k != "pos_embed")
    ]
    missing = [k for k in own if k not in state and not k.startswith(pooling.fresh)]
    unexpected = [k for k in state if k not in own and not k.startswith(pooling.ignored)]
    return wrong_shape, missing, unexpected


def fitting_archs(state: dict[str, torch.Tensor]) -> list[str]:
    """The archs whose backbone an encoder state dict fits (names and shapes, any grid)."""
    encoder = {k: v for k, v in state.items() if not k.startswith("head.")}
    fits = []
    for arch, pooling in POOLING.items():
        with torch.device("meta"):  # names and shapes only
            own = build_backbone(ModelConfig(arch=arch)).state_dict()
        if not any(_mismatch(encoder, own, pooling, grid=False)):
            fits.append(arch)
    return fits


def load_retfound_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load RETFound encoder weights into `model` (built by build_backbone), checking every key
    and shape."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path}: a folder, not a checkpoint file; set model.checkpoint to the .pth in it"
        )
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: {path} not found")
    arch = arch_of(model)
    pooling = POOLING.get(arch) or next(
        p for p in POOLING.values() if p.global_pool == model.global_pool
    )
    state = _from_meta_dinov3(_read_state_dict(path), model, path)
    own = model.state_dict()
    # A fine-tuned checkpoint's head belongs to another task: start it fresh, as RETFound does.
    for key in ("head.weight", "head.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            del state[key]
    if (
        "pos_embed" in state
        and "pos_embed" in own
        and state["pos_embed"].shape != own["pos_embed"].shape
    ):
        state["pos_embed"] = _resampled_pos_embed(state["pos_embed"], model, path)
    wrong_shape, missing, unexpected = _mismatch(state, own, pooling)
    if wrong_shape or missing or unexpected:
        fits = [a for a in fitting_archs(state) if a != arch]
        hint = f"it fits model.arch {fits[0]}" if fits else "wrong model.arch or wrong file?"
        raise CheckpointError(
            f"{path} does not fit model.arch {arch or ''}; wrong shapes: {wrong_shape[:3]}, "
            f"missing: {missing[:3]}, unexpected: {unexpected[:3]} ({hint})"
        )
    result = model.load_state_dict(state, strict=False)
    nn.init.trunc_normal_(model.head.weight, std=2e-5)  # as the official fine-tuning code
    log.info(
        "loaded %s (%d tensors; fresh: %s)",
        path,
        len(state) - len(result.unexpected_keys),
        sorted({k.split(".")[0] for k in result.missing_keys}),
    )

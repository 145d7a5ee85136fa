"""Build the timm ViT, load a RETFound checkpoint into it, and wrap it with PEFT LoRA."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from functools import partial
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retfound_hpo.config import ModelConfig
from retfound_hpo.errors import CheckpointError

log = logging.getLogger(__name__)

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
MODEL_CONFIG_FILE = "model_config.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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


def _config_dict(cfg: ModelConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}


def save_trained_model(
    model: PeftModel, out_dir: str | Path, cfg: ModelConfig, hparams: dict
) -> None:
    """Save the LoRA adapter (with head and fc_norm or norm) and what rebuilds the model."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    config = {"model": _config_dict(cfg), "hparams": hparams}
    (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2))


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: unreadable ({err}); copy the model folder again") from None


def read_model_config(model_dir: str | Path) -> tuple[ModelConfig, dict]:
    """The ModelConfig saved in a model folder, and the whole config with every model key."""
    path = Path(model_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{model_dir}: not a model folder (no {MODEL_CONFIG_FILE}); give the folder "
            "train-best wrote (e.g. models/best_model) or a merged export"
        )
    config = _read_json(path)
    raw = config.get("model") if isinstance(config, dict) else None
    if not isinstance(raw, dict) or not isinstance(config.get("hparams", {}), dict):
        raise CheckpointError(f"{path}: needs a 'model' mapping (and 'hparams', a mapping)")
    kinds = {
        k: (int, float) if isinstance(v, float) else type(v)
        for k, v in _config_dict(ModelConfig()).items()
    }
    for key, value in raw.items():
        if not isinstance(value, kinds.get(key, ())):  # () for a key ModelConfig does not have
            raise CheckpointError(f"{path}: model.{key}: {value!r} is not a ModelConfig value")
    if raw.get("arch") not in POOLING:
        raise CheckpointError(
            f"{path}: model.arch: {raw.get('arch')!r} is not one of {list(POOLING)}"
        )
    cfg = ModelConfig(**{**raw, "lora_targets": tuple(raw.get("lora_targets", ("qkv",)))})
    return cfg, {"hparams": {}, **config, "model": _config_dict(cfg)}


def load_trained_model(model_dir: str | Path) -> tuple[PeftModel, dict]:
    """Rebuild a model saved by `save_trained_model`; returns it in eval mode with its config."""
    model_dir = Path(model_dir)
    cfg, config = read_model_config(model_dir)
    missing = [name for name in ADAPTER_FILES if not (model_dir / name).is_file()]
    if missing:
        raise CheckpointError(f"{model_dir}: no {' and no '.join(missing)} (the LoRA adapter)")
    # An adapter trained with another pooling would load without a word and grade wrongly.
    saved = _read_json(model_dir / ADAPTER_FILES[0])
    saved = saved.get("modules_to_save") if isinstance(saved, dict) else None
    trainable = list(POOLING[cfg.arch].trainable)
    if sorted(saved or []) != sorted(trainable):
        raise CheckpointError(
            f"{model_dir}: the adapter trains {saved}, but {cfg.arch} trains {trainable} "
            "(saved by an older version?); train it again"
        )
    backbone = build_backbone(cfg, config["hparams"].get("dropout", 0.0))
    load_retfound_checkpoint(backbone, cfg.checkpoint)
    try:
        model = PeftModel.from_pretrained(backbone, model_dir)
    except SafetensorError as err:
        raise CheckpointError(f"{model_dir / ADAPTER_FILES[1]}: corrupt ({err})") from None
    return model.eval(), config

"""A trained model on disk, delivered as its adaptation trained it, with the config that rebuilds
it (`model_config.json`):

    lora          adapter_config.json + adapter_model.safetensors (PEFT: LoRA, head, its norm);
                  rebuilt on the RETFound checkpoint named in the config
    full          model.safetensors: the whole state dict (needs no RETFound checkpoint)
    linear_probe  head.safetensors: the head alone; rebuilt on the RETFound checkpoint

A merged export (model.export) is a model.safetensors folder too, whatever its adaptation.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.files import write_bytes_atomic
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.core.recipes import ADAPTATIONS
from retfound_hpo.model.backbones import POOLING, build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint

MODEL_CONFIG_FILE = "model_config.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
FULL_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"
DELIVERY = {"lora": ADAPTER_FILES, "full": (FULL_FILE,), "linear_probe": (HEAD_FILE,)}
WHAT = {"lora": "the LoRA adapter", "full": "the full state dict", "linear_probe": "the head"}


def _config_dict(cfg: ModelConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}


def _state_bytes(model: nn.Module, trainable_only: bool) -> bytes:
    state = {
        n: p.detach().cpu().contiguous()
        for n, p in (model.named_parameters() if trainable_only else model.state_dict().items())
        if not trainable_only or p.requires_grad
    }
    return safetensors_bytes(state)


def save_trained_model(model: nn.Module, out_dir: str | Path, cfg: ModelConfig, hparams: dict):
    """Save what `cfg.adaptation` trained (DELIVERY) and what rebuilds the model."""
    out_dir = Path(out_dir)
    if cfg.adaptation == "lora":
        model.save_pretrained(out_dir)
    else:
        file = DELIVERY[cfg.adaptation][0]
        write_bytes_atomic(out_dir / file, _state_bytes(model, cfg.adaptation == "linear_probe"))
    config = {"model": _config_dict(cfg), "hparams": hparams}
    (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2))


def delivery_files(config: dict) -> tuple[str, ...]:
    """The weight files a model folder of this config holds."""
    return (FULL_FILE,) if config.get("merged") else DELIVERY[config["model"]["adaptation"]]


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
    if raw.get("adaptation", "lora") not in ADAPTATIONS:
        raise CheckpointError(
            f"{path}: model.adaptation: {raw['adaptation']!r} is not one of {list(ADAPTATIONS)}"
        )
    cfg = ModelConfig(**{**raw, "lora_targets": tuple(raw.get("lora_targets", ("qkv",)))})
    return cfg, {"hparams": {}, **config, "model": _config_dict(cfg)}


def _load_safetensors(path: Path) -> dict:
    try:
        return load_file(path)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt ({err}); copy the model folder again") from None


def load_full_state(model_dir: str | Path, cfg: ModelConfig) -> nn.Module:
    """build_backbone(cfg) with the whole state dict of model_dir/model.safetensors, strictly."""
    path = Path(model_dir) / FULL_FILE
    state = _load_safetensors(path)
    model = build_backbone(cfg)
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    wrong_shape = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{path} does not fit model.arch {cfg.arch} of its {MODEL_CONFIG_FILE}; missing: "
            f"{missing[:3]}, unexpected: {unexpected[:3]}, wrong shapes: {wrong_shape[:3]}"
        )
    model.load_state_dict(state)
    return model


def _load_head(model_dir: Path, cfg: ModelConfig) -> nn.Module:
    """The backbone on its RETFound checkpoint, with the head saved in model_dir."""
    path = model_dir / HEAD_FILE
    state = _load_safetensors(path)
    model = build_backbone(cfg)
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    if sorted(state) != sorted(head) or any(state[k].shape != head[k].shape for k in head):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise CheckpointError(
            f"{path}: holds {shapes}, not the head of model.arch {cfg.arch} with "
            f"{cfg.num_classes} classes; train it again"
        )
    load_retfound_checkpoint(model, cfg.checkpoint)
    model.load_state_dict(state, strict=False)
    return model


def _load_adapter(model_dir: Path, cfg: ModelConfig, config: dict) -> PeftModel:
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
        return PeftModel.from_pretrained(backbone, model_dir)
    except SafetensorError as err:
        raise CheckpointError(f"{model_dir / ADAPTER_FILES[1]}: corrupt ({err})") from None


def load_trained_model(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by `save_trained_model` (any adaptation) or a merged export;
    returns it in eval mode with its config."""
    model_dir = Path(model_dir)
    cfg, config = read_model_config(model_dir)
    files = delivery_files(config)
    missing = [name for name in files if not (model_dir / name).is_file()]
    if missing:
        what = "a merged export" if config.get("merged") else WHAT[cfg.adaptation]
        raise CheckpointError(f"{model_dir}: no {' and no '.join(missing)} ({what})")
    if files == (FULL_FILE,):
        model = load_full_state(model_dir, cfg)
    elif cfg.adaptation == "lora":
        model = _load_adapter(model_dir, cfg, config)
    else:
        model = _load_head(model_dir, cfg)
    return model.eval(), config

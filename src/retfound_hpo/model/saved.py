"""A trained model on disk: the PEFT adapter folder and the config that rebuilds the model."""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel
from safetensors import SafetensorError

from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.backbones import POOLING, build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint

MODEL_CONFIG_FILE = "model_config.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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

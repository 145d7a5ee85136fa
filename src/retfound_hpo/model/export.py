"""Merged model export: LoRA folded into the backbone, one plain state dict, no PEFT needed.

    retfound-export models/best_model models/best_model_merged

The export folder holds `model.safetensors`, the state dict of `model.build_backbone(cfg)` (timm's
VisionTransformer, or Eva for DINOv3) with the LoRA deltas and the trained head and fc_norm (MAE)
or final norm merged in, and the same `model_config.json` as the model folder. Any adaptation
exports: a full fine-tune's state dict as it is, a linear probe's head on its frozen backbone.
Unlike the adapter or the head it does not need the RETFound checkpoint file, so it is what to
hand to another site.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from peft import PeftModel
from safetensors.torch import save as safetensors_bytes
from torch import nn

from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.files import write_bytes_atomic, write_json_atomic
from retfound_hpo.model.saved import (
    FULL_FILE,
    MODEL_CONFIG_FILE,
    load_full_state,
    load_trained_model,
    read_model_config,
)

log = logging.getLogger(__name__)

MERGED_FILE = FULL_FILE


def export_merged(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge the model saved in model_dir into its backbone; write out_dir/{model.safetensors,
    model_config.json}; return out_dir."""
    out_dir = Path(out_dir)
    model, config = load_trained_model(model_dir)
    backbone = model
    if isinstance(model, PeftModel):  # W + BA*scale per LoRA layer; head and norms unwrapped
        backbone = model.merge_and_unload()
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    write_bytes_atomic(out_dir / MERGED_FILE, safetensors_bytes(state))
    write_json_atomic(out_dir / MODEL_CONFIG_FILE, {**config, "merged": True})
    log.info("wrote merged model (%d tensors) to %s", len(state), out_dir)
    return out_dir


def load_merged(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """A merged export (or a full fine-tune's folder) as a plain timm model in eval mode, with
    its config."""
    cfg, config = read_model_config(model_dir)
    if not (Path(model_dir) / MERGED_FILE).is_file():
        raise CheckpointError(f"{model_dir}: no {MERGED_FILE}; export the model again")
    return load_full_state(model_dir, cfg).eval(), config


def main(argv: list[str] | None = None) -> None:
    """Console command retfound-export (also `python -m retfound_hpo.model.export`)."""
    parser = argparse.ArgumentParser(prog="retfound-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="folder written by train-best, e.g. models/best_model")
    parser.add_argument("out_dir", help="folder for model.safetensors + model_config.json")
    args = parser.parse_args(argv)
    run_stage(lambda: export_merged(args.model_dir, args.out_dir))


if __name__ == "__main__":
    main()

import argparse

import pytest
import torch

from retfound_hpo.config import ModelConfig
from retfound_hpo.errors import CheckpointError
from retfound_hpo.model import (
    build_backbone,
    build_model,
    count_trainable,
    load_retfound_checkpoint,
    load_trained_model,
    save_trained_model,
)


class Payload:
    """An arbitrary pickled object: must not be unpickled from a checkpoint."""


def cfg(path, **kw):
    return ModelConfig(checkpoint=str(path), **kw)


def test_mae_checkpoint_loads_into_encoder(mae_checkpoint):
    model = build_backbone(cfg(mae_checkpoint))
    load_retfound_checkpoint(model, mae_checkpoint)
    saved = torch.load(mae_checkpoint, weights_only=True)["model"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert model.head.weight.std() < 1e-4  # fresh head, trunc_normal std 2e-5


def test_pos_embed_is_interpolated_for_other_input_size(mae_checkpoint):
    model = build_backbone(cfg(mae_checkpoint, input_size=128))
    load_retfound_checkpoint(model, mae_checkpoint)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 192)
    assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 5)


def test_unexpected_and_missing_keys_are_errors(tmp_path, mae_checkpoint):
    state = torch.load(mae_checkpoint, weights_only=True)["model"]
    state["blocks.9.attn.qkv.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected: \['blocks.9.attn.qkv.weight'\]"):
        load_retfound_checkpoint(build_backbone(cfg(mae_checkpoint)), tmp_path / "extra.pth")
    del state["blocks.9.attn.qkv.weight"], state["blocks.0.mlp.fc1.weight"]
    torch.save({"model": state}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing: \['blocks.0.mlp.fc1.weight'\]"):
        load_retfound_checkpoint(build_backbone(cfg(mae_checkpoint)), tmp_path / "missing.pth")


def test_wrong_architecture_names_the_shapes(mae_checkpoint):
    with pytest.raises(CheckpointError, match="wrong shapes.*model.arch"):
        load_retfound_checkpoint(
            build_backbone(cfg(mae_checkpoint, arch="vit_large_patch16_224", input_size=32)),
            mae_checkpoint,
        )


def test_pickled_namespace_loads_but_other_objects_do_not(tmp_path, mae_checkpoint):
    state = torch.load(mae_checkpoint, weights_only=True)["model"]
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "ft.pth")
    load_retfound_checkpoint(build_backbone(cfg(mae_checkpoint)), tmp_path / "ft.pth")

    torch.save({"model": state, "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Unsupported global|weights_only"):
        load_retfound_checkpoint(build_backbone(cfg(mae_checkpoint)), tmp_path / "evil.pth")


def test_lora_trains_only_adapters_head_and_fc_norm(mae_checkpoint):
    model = build_model(cfg(mae_checkpoint), lora_r=4, lora_alpha=16, dropout=0.3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable)
    assert all(("lora_" in n and "qkv" in n) or "head" in n or "fc_norm" in n for n in trainable)
    # 4 blocks x rank 4 x (192 in + 576 out) + head (192*5+5) + fc_norm (2*192)
    assert count_trainable(model) == 4 * 4 * (192 + 576) + 965 + 384
    assert model.base_model.model.head_drop.p == 0.3


def test_saved_model_reloads_with_identical_logits(tmp_path, mae_checkpoint):
    model = build_model(cfg(mae_checkpoint), lora_r=4, lora_alpha=16, dropout=0.1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    x = torch.randn(2, 3, 96, 96)
    expected = model(x)
    save_trained_model(model, tmp_path / "best", cfg(mae_checkpoint), {"lora_r": 4, "dropout": 0.1})
    reloaded, config = load_trained_model(tmp_path / "best")
    assert config["hparams"]["lora_r"] == 4
    assert torch.allclose(reloaded(x), expected, atol=1e-5)

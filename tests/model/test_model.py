import argparse
import re

import numpy as np
import pytest
import torch

from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.adapters import build_model, count_trainable
from retfound_hpo.model.backbones import build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint
from retfound_hpo.model.saved import load_trained_model, save_trained_model


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
    with pytest.raises(CheckpointError, match=r"other than tensors \(GLOBAL [\w.]*Payload\)"):
        load_retfound_checkpoint(build_backbone(cfg(mae_checkpoint)), tmp_path / "evil.pth")


def damage(path, case: str):
    """A checkpoint file as users end up with it when a download goes wrong."""
    good = path.read_bytes()
    if case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "truncated_head":  # cut off before the zip's first record ends
        path.write_bytes(good[:100])
    elif case == "html":
        path.write_text("\n<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n")
    elif case == "xml":  # a cloud storage error page
        path.write_text('<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>')
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "legacy_truncated":  # torch's pre-1.6 format, also cut off
        torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:-1000])
    elif case == "folder":
        path.unlink()
        path.mkdir()
    elif case == "object":
        torch.save({"model": torch.load(path, weights_only=True)["model"], "x": Payload()}, path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", r"truncated or corrupt checkpoint \(.+\); download it again"),
        ("truncated_head", r"truncated or corrupt checkpoint \(PytorchStreamReader failed"),
        ("legacy_truncated", r"truncated or corrupt checkpoint \(.+\); download it again"),
        ("html", r"an HTML page, not a checkpoint \(a download that saved a login or error"),
        ("xml", r"an HTML page, not a checkpoint"),
        ("empty", r"empty file \(0 bytes\), not a checkpoint; download it again"),
        ("random", r"not a PyTorch checkpoint \(.+\); model.checkpoint must be RETFound's"),
        ("folder", r"a folder, not a checkpoint file; set model.checkpoint to the .pth in it"),
        ("object", r"holds Python objects other than tensors \(GLOBAL \S+Payload\); RETFound"),
    ],
)  # fmt: skip
def test_damaged_checkpoint_is_one_line_naming_the_file(mae_checkpoint, case, message):
    damage(mae_checkpoint, case)
    with pytest.raises(CheckpointError) as error:
        load_retfound_checkpoint(build_backbone(cfg(mae_checkpoint)), mae_checkpoint)
    text = str(error.value)
    assert re.match(re.escape(f"{mae_checkpoint}: ") + message, text), text
    assert "\n" not in text
    # Unrestricted unpickling of a downloaded file is code execution: never suggest it, not
    # even in the chained torch error a traceback would show.
    assert "weights_only=False" not in text and "False" not in text
    err = error.value
    assert (err.__cause__ or (None if err.__suppress_context__ else err.__context__)) is None


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

"""RETFound checkpoint layouts: MAE (`model`), DINOv2 (`teacher`, `backbone.`), plain state dicts.

Fast tests convert demo-size files; the two slow ones build ViT-Large LoRA models from files in
RETFound's MAE and DINOv2 layouts and take one training step on CPU.
"""

import argparse
import logging
import re

import pytest
import timm
import torch
from peft.utils import ModulesToSaveWrapper
from torch import nn

from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.adapters import build_model
from retfound_hpo.model.backbones import ARCH_KWARGS, CLASS_TOKEN, POOLING, build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint


def shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def pooling_layers(model: nn.Module) -> list:
    """Which of the final norm and fc_norm is a LayerNorm, and its eps."""
    return [isinstance(m, nn.LayerNorm) and m.eps for m in (model.norm, model.fc_norm)]


# RETFound-MAE fine-tunes with global_pool="avg"; RETFound-DINOv2 with timm's default pooling.
@pytest.mark.parametrize(
    ("arch", "pooling"),
    [("vit_large_patch16_224", {"global_pool": "avg"}), ("vit_large_patch14_dinov2", {})],
)
def test_archs_mirror_timm(arch, pooling):
    """Same parameters and pooling as timm's own definition: names, shapes, norms."""
    with torch.device("meta"):
        ours = build_backbone(ModelConfig(arch=arch, input_size=224))
        theirs = timm.create_model(arch, img_size=224, num_classes=5, **pooling)
    assert shapes(ours) == shapes(theirs)
    assert ours.global_pool == theirs.global_pool
    assert pooling_layers(ours) == pooling_layers(theirs)
    assert ours.patch_embed.patch_size == theirs.patch_embed.patch_size
    if arch.endswith("dinov2"):  # layer scale, no register tokens, as RETFound-DINOv2
        assert "blocks.0.ls1.gamma" in shapes(ours) and ours.num_reg_tokens == 0
        assert ARCH_KWARGS[arch]["init_values"] == 1e-5


# Demo-size files in each layout, converted from the MAE fixture.
def encoder_state(mae_checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(mae_checkpoint, weights_only=True)["model"]
    return {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}


def dinov2_teacher(encoder: dict, chunks: int = 0) -> dict[str, torch.Tensor]:
    """A DINOv2 training checkpoint's `teacher`: backbone (maybe block-chunked) + DINO heads."""
    teacher = {"dino_head.mlp.0.weight": torch.zeros(8, 192), "ibot_head.mlp.0.bias": torch.ones(4)}
    for key, value in encoder.items():
        key = key.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
        if chunks and key.startswith("blocks."):
            block = int(key.split(".")[1])  # FSDP BlockChunk: blocks.<chunk>.<block>.
            key = key.replace(f"blocks.{block}.", f"blocks.{block // chunks}.{block}.", 1)
        teacher[f"backbone.{key}"] = value
    teacher["backbone.mask_token"] = torch.zeros(1, 192)
    return teacher


@pytest.mark.parametrize("chunks", [0, 2])
def test_dinov2_teacher_layout_loads(tmp_path, mae_checkpoint, chunks):
    encoder = encoder_state(mae_checkpoint)
    path = tmp_path / "dinov2.pth"
    torch.save({"teacher": dinov2_teacher(encoder, chunks), "iteration": 1}, path)
    model = build_backbone(ModelConfig(checkpoint=str(path)))
    load_retfound_checkpoint(model, path)
    assert torch.equal(model.blocks[3].mlp.fc1.weight, encoder["blocks.3.mlp.fc1.weight"])
    assert torch.equal(model.blocks[1].mlp.fc2.bias, encoder["blocks.1.mlp.fc2.bias"])


def test_plain_state_dict_with_ddp_prefix_loads(tmp_path, mae_checkpoint):
    encoder = encoder_state(mae_checkpoint)
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v.half() for k, v in encoder.items()}, path)  # fp16, from DDP
    model = build_backbone(ModelConfig(checkpoint=str(path)))
    load_retfound_checkpoint(model, path)
    assert torch.equal(model.cls_token, encoder["cls_token"].half().float())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("rename", r"missing: \['blocks.2.attn.qkv.weight'\], unexpected: \['blocks.2.attn.qkv_"),
        ("registers", r"unexpected: \['register_tokens'\]"),
        ("tensor", "expected a dict of weights, got Tensor"),
        ("nested", "no state dict under 'model' or 'teacher'"),
    ],
)  # fmt: skip
def test_teacher_with_wrong_keys_is_an_error(tmp_path, mae_checkpoint, change, message):
    teacher = dinov2_teacher(encoder_state(mae_checkpoint))
    ckpt = {"teacher": teacher, "args": argparse.Namespace(arch="vit_large")}
    if change == "rename":
        teacher["backbone.blocks.2.attn.qkv_w"] = teacher.pop("backbone.blocks.2.attn.qkv.weight")
    elif change == "registers":  # DINOv2 with registers is another architecture
        teacher["backbone.register_tokens"] = torch.zeros(1, 4, 192)
    elif change == "tensor":
        ckpt = torch.zeros(3)
    else:
        ckpt = {"state": {"epoch": 3}}
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        load_retfound_checkpoint(build_backbone(ModelConfig()), tmp_path / "bad.pth")


# DINOv2 pooling at demo size: the demo arch set to pool like RETFound-DINOv2.
@pytest.fixture
def cls_pooled_demo(monkeypatch):
    monkeypatch.setitem(POOLING, "vit_demo", CLASS_TOKEN)


def with_trained_norm(encoder: dict) -> dict:
    """The encoder with a final norm unlike a fresh LayerNorm's ones and zeros."""
    generator = torch.Generator().manual_seed(1)
    return {
        **encoder,
        "norm.weight": 1 + 0.1 * torch.randn(192, generator=generator),
        "norm.bias": 0.1 * torch.randn(192, generator=generator),
    }


@pytest.mark.parametrize("pooled", ["cls", "mean"])
def test_pooling_feeds_the_head(tmp_path, mae_checkpoint, monkeypatch, pooled):
    """DINOv2: CLS token through the checkpoint's norm; MAE: patch mean through fresh fc_norm."""
    if pooled == "cls":
        monkeypatch.setitem(POOLING, "vit_demo", CLASS_TOKEN)
    encoder = with_trained_norm(encoder_state(mae_checkpoint))
    path = tmp_path / "dinov2.pth"
    torch.save({"teacher": dinov2_teacher(encoder)}, path)
    model = build_backbone(ModelConfig(checkpoint=str(path))).eval()
    load_retfound_checkpoint(model, path)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        tokens = model.forward_features(x)  # the blocks' output through `norm`, if any
        if pooled == "cls":
            assert torch.equal(model.norm.weight, encoder["norm.weight"])
            assert isinstance(model.fc_norm, nn.Identity)
            expected = model.head(tokens[:, 0])
        else:
            assert isinstance(model.norm, nn.Identity)
            assert torch.equal(model.fc_norm.weight, torch.ones(192))  # fresh
            expected = model.head(model.fc_norm(tokens[:, 1:].mean(dim=1)))
        torch.testing.assert_close(model(x), expected)


def test_cls_pooling_needs_the_checkpoints_norm(tmp_path, mae_checkpoint, cls_pooled_demo):
    encoder = encoder_state(mae_checkpoint)
    del encoder["norm.weight"], encoder["norm.bias"]
    torch.save({"teacher": dinov2_teacher(encoder)}, tmp_path / "no_norm.pth")
    with pytest.raises(CheckpointError, match=r"missing: \['norm.weight', 'norm.bias'\]"):
        load_retfound_checkpoint(build_backbone(ModelConfig()), tmp_path / "no_norm.pth")
    # and an MAE file's decoder is not part of a DINOv2 checkpoint
    with pytest.raises(CheckpointError, match=r"unexpected: \['decoder_"):
        load_retfound_checkpoint(build_backbone(ModelConfig()), mae_checkpoint)


def test_cls_pooled_lora_trains_head_and_final_norm(tmp_path, mae_checkpoint, cls_pooled_demo):
    path = tmp_path / "dinov2.pth"
    torch.save({"teacher": dinov2_teacher(with_trained_norm(encoder_state(mae_checkpoint)))}, path)
    model = build_model(ModelConfig(checkpoint=str(path)), lora_r=4, lora_alpha=16, dropout=0.1)
    vit = model.base_model.model
    wrapped = {n for n, m in vit.named_modules() if isinstance(m, ModulesToSaveWrapper)}
    assert {"head", "norm"} <= wrapped
    for name in wrapped - {"head", "norm"}:  # PEFT's suffix match: fc_norm, attn.q_norm, ...
        assert isinstance(vit.get_submodule(name).original_module, nn.Identity), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" not in n} == {
        f"base_model.model.{m}.modules_to_save.default.{p}"
        for m in ("head", "norm")
        for p in ("weight", "bias")
    }


# ViT-Large from RETFound-layout files made here. Random weights are views of one shared,
# offset buffer: torch.save writes it once (17 MB instead of 1.2 GB) and it takes a second.
def random_weights(model: nn.Module, skip=("head.", "fc_norm.")) -> dict[str, torch.Tensor]:
    largest = max(v.numel() for v in model.state_dict().values())
    buffer = torch.randn(largest + 4096, generator=torch.Generator().manual_seed(0)) * 0.02
    weights = {
        k: buffer[i % 4096 : i % 4096 + v.numel()].view(v.shape)
        for i, (k, v) in enumerate(model.state_dict().items())
        if not k.startswith(skip)
    }
    # Norm scales near 1 and layer scales near 0.1, as in trained encoders: with every factor at
    # 0.02 the gradient reaching early adapters fell to ~1e-14 and underflowed on some CPUs.
    for k, v in weights.items():
        if re.search(r"norm\d?\.weight$", k):
            weights[k] = 1 + v
        elif k.endswith(".gamma"):
            weights[k] = 0.1 + v
    return weights


def mae_layout(encoder: dict) -> dict:
    """RETFound_cfp_weights.pth: encoder + final norm + MAE decoder, under `model`."""
    state = {**encoder, "norm.weight": torch.ones(1024), "norm.bias": torch.zeros(1024)}
    state["mask_token"] = torch.zeros(1, 1, 512)
    state["decoder_embed.weight"] = torch.zeros(512, 1024)
    state["decoder_embed.bias"] = torch.zeros(512)
    state["decoder_pos_embed"] = torch.zeros(1, 197, 512)
    state["decoder_blocks.0.attn.qkv.weight"] = torch.zeros(1536, 512)
    state["decoder_norm.weight"] = torch.ones(512)
    state["decoder_pred.weight"] = torch.zeros(768, 512)
    return {"model": state, "optimizer": {}, "epoch": 799, "args": argparse.Namespace(blr=1.5e-4)}


def dinov2_layout(encoder: dict) -> dict:
    """RETFound-DINOv2: `teacher` with `backbone.` keys (518 px positions) and DINO heads."""
    encoder = dict(encoder)
    generator = torch.Generator().manual_seed(3)
    encoder["pos_embed"] = torch.randn(1, 1 + 37 * 37, 1024, generator=generator) * 0.02  # 518 px
    teacher = {f"backbone.{k}": v for k, v in encoder.items()}  # with the final norm
    teacher["backbone.mask_token"] = torch.zeros(1, 1024)
    teacher["dino_head.last_layer.weight_g"] = torch.ones(65536, 1)
    return {"teacher": teacher, "student": {}, "iteration": 112499}


def train_one_step(model: nn.Module, size: int) -> None:
    """One AdamW step at batch 2: the loss is finite, adapters move, the encoder does not."""
    frozen = dict(model.named_parameters())["base_model.model.blocks.5.attn.qkv.base_layer.weight"]
    before = frozen.detach().clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    lora_b = [(n, p) for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 24
    assert [n for n, p in lora_b if not p.abs().sum() > 0] == []  # all were zeros
    assert torch.equal(frozen, before)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "layout", "block", "fresh"),
    [
        ("vit_large_patch16_224", mae_layout, "blocks.23.attn.qkv.weight", ["fc_norm", "head"]),
        ("vit_large_patch14_dinov2", dinov2_layout, "blocks.23.ls2.gamma", ["head"]),
    ],
)
def test_vit_large_lora_from_retfound_layout(tmp_path, caplog, arch, layout, block, fresh):
    cfg = ModelConfig(arch=arch, input_size=224, checkpoint=str(tmp_path / "retfound.pth"))
    with torch.device("meta"):  # names and shapes only
        encoder_shapes = build_backbone(cfg)
    encoder = random_weights(encoder_shapes)
    torch.save(layout(encoder), cfg.checkpoint)

    # A wrong key is named, with the likely cause (the check runs before any weight is copied).
    broken = layout(encoder)
    state = broken.get("model") or broken["teacher"]
    prefix = "" if "model" in broken else "backbone."
    state[f"{prefix}blocks.7.mlp.fc_1.weight"] = state.pop(f"{prefix}blocks.7.mlp.fc1.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(
        CheckpointError, match=r"missing: \['blocks.7.mlp.fc1.weight'\].*model.arch"
    ):
        load_retfound_checkpoint(encoder_shapes, tmp_path / "broken.pth")

    with caplog.at_level(logging.INFO, logger="retfound_hpo.model.checkpoints"):
        model = build_model(cfg, 8, 16, 0.1)
    assert f"fresh: {fresh}" in caplog.text  # nothing else missing
    vit = model.base_model.model
    params = dict(vit.named_parameters())
    loaded = params[block.replace("qkv.weight", "qkv.base_layer.weight")]
    assert torch.equal(loaded, encoder[block])
    if arch.endswith("dinov2"):  # CLS token through the pretrained final norm, trained further
        assert "norm.weight" in encoder and "fc_norm.weight" not in vit.state_dict()
        assert torch.equal(params["norm.modules_to_save.default.weight"], encoder["norm.weight"])
        assert torch.equal(params["norm.modules_to_save.default.bias"], encoder["norm.bias"])
    assert vit.pos_embed.shape == (1, 1 + (224 // vit.patch_embed.patch_size[0]) ** 2, 1024)
    train_one_step(model, 224)

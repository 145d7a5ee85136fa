"""RETFound-Green and DINOv3 by their published layouts: tiny stand-in checkpoints with the real
files' keys and nesting, loaded through model.checkpoint, one trial each; and the mistakes a
user makes with them, each one line."""

import pytest
import timm
import torch
from torch import nn

from conftest import easy_images, tiny_params
from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.backbones import ARCH_KWARGS, build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint
from retfound_hpo.search.workers import run_search
from retfound_hpo.training.inputs import normalizer_for

GREEN, DINOV3 = "vit_small_patch14_reg4_dinov2", "vit_large_patch16_dinov3"
TINY = dict(embed_dim=32, depth=2, num_heads=2)  # head_dim 16: divisible by 4, as RoPE needs


@pytest.fixture
def tiny_archs(monkeypatch):
    """The two archs at stand-in size: same classes, pooling and layout, smaller dims."""
    for arch in (GREEN, DINOV3):
        monkeypatch.setitem(ARCH_KWARGS, arch, {**ARCH_KWARGS[arch], **TINY})


def trained_like(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict unlike a fresh model's: norms and layer scales off their initial values."""
    generator = torch.Generator().manual_seed(1)
    state = model.state_dict()
    return {k: v + 0.1 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def green_file(path, img_size=392):
    """retfoundgreen_statedict.pth: a plain timm state dict of the num_classes=0 model at 392 px
    (cls_token, reg_token, a pos_embed of patches only, ls1/ls2 layer scales, the final norm)."""
    model = timm.create_model(GREEN, pretrained=False, img_size=img_size, num_classes=0, **TINY)
    state = trained_like(model)
    torch.save(state, path)
    return state


def dinov3_meta_file(path):
    """Meta's dinov3_vitl16_pretrain_lvd1689m-*.pth: a plain state dict with storage_tokens,
    ls1/ls2 gammas, qkv biases (zero) with their mask, RoPE periods and a mask_token."""
    model = timm.create_model(DINOV3, pretrained=False, num_classes=0, **TINY)
    timm_state = trained_like(model)
    meta = {}
    for key, value in timm_state.items():
        key = key.replace("reg_token", "storage_tokens")
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        meta[key] = value
    dim = TINY["embed_dim"]
    for block in range(TINY["depth"]):
        meta[f"blocks.{block}.attn.qkv.bias"] = torch.zeros(3 * dim)
        meta[f"blocks.{block}.attn.qkv.bias_mask"] = torch.ones(3 * dim)
    meta["mask_token"] = torch.zeros(1, dim)
    meta["rope_embed.periods"] = torch.arange(dim // TINY["num_heads"] // 4, dtype=torch.float32)
    torch.save(meta, path)
    return timm_state


def test_green_loads_and_pools_the_patches_through_its_own_norm(tmp_path, tiny_archs):
    saved = green_file(tmp_path / "retfoundgreen_statedict.pth")
    cfg = ModelConfig(arch=GREEN, checkpoint=str(tmp_path / "retfoundgreen_statedict.pth"))
    assert cfg.input_size == 392 and cfg.normalization == "inception"
    model = build_backbone(cfg).eval()
    load_retfound_checkpoint(model, cfg.checkpoint)
    assert torch.equal(model.norm.weight, saved["norm.weight"])  # pretrained, not a fresh fc_norm
    assert torch.equal(model.pos_embed, saved["pos_embed"]) and model.pos_embed.shape[1] == 784
    x = torch.randn(2, 3, 392, 392)
    with torch.no_grad():
        tokens = model.forward_features(x)  # through the final norm; 5 prefix tokens
        expected = model.head(tokens[:, 5:].mean(dim=1))
        torch.testing.assert_close(model(x), expected)
    normalize = normalizer_for(model)
    assert normalize.mean.flatten().tolist() == [127.5] * 3 == normalize.std.flatten().tolist()


def test_dinov3_loads_from_metas_layout_and_pools_the_class_token(tmp_path, tiny_archs):
    timm_state = dinov3_meta_file(tmp_path / "dinov3_vitl16_pretrain.pth")
    cfg = ModelConfig(arch=DINOV3, checkpoint=str(tmp_path / "dinov3_vitl16_pretrain.pth"))
    model = build_backbone(cfg).eval()
    assert type(model).__name__ == "Eva" and model.pos_embed is None  # RoPE
    load_retfound_checkpoint(model, cfg.checkpoint)
    for key in ("reg_token", "blocks.1.gamma_2", "blocks.0.attn.qkv.weight", "norm.weight"):
        assert torch.equal(model.state_dict()[key], timm_state[key]), key
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():  # as RETFound's code: the class token after the final norm
        torch.testing.assert_close(model(x), model.head(model.forward_features(x)[:, 0]))


def test_a_non_zero_qkv_bias_is_refused_not_dropped(tmp_path, tiny_archs):
    dinov3_meta_file(tmp_path / "d.pth")
    state = torch.load(tmp_path / "d.pth", weights_only=True)
    state["blocks.1.attn.qkv.bias"][0] = 0.5
    torch.save(state, tmp_path / "d.pth")
    with pytest.raises(CheckpointError, match=r"blocks.1.attn.qkv.bias is not zero, but"):
        load_retfound_checkpoint(build_backbone(ModelConfig(arch=DINOV3)), tmp_path / "d.pth")


@pytest.mark.parametrize(
    ("arch", "pool"),
    [(GREEN, dict(global_pool="avg", fc_norm=False)), (DINOV3, dict(global_pool="token"))],
)
def test_the_full_size_archs_mirror_timm(arch, pool):
    """RETFound-Green: avg pooling through the pretrained norm; DINOv3: the class token."""
    with torch.device("meta"):
        ours = build_backbone(ModelConfig(arch=arch))
        size = ours.pretrained_cfg["input_size"][1]
        theirs = timm.create_model(arch, img_size=size, num_classes=5, **pool)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    assert type(ours) is type(theirs) and ours.global_pool == theirs.global_pool


@pytest.mark.parametrize(
    ("arch", "make", "size"), [(GREEN, green_file, 392), (DINOV3, dinov3_meta_file, 224)]
)
def test_one_trial_through_model_checkpoint(tmp_path, tiny_archs, arch, make, size):
    make(tmp_path / "weights.pth")
    params = tiny_params(
        tmp_path,
        tmp_path / "weights.pth",
        model={"arch": arch, "input_size": None},  # the arch's own size
        hpo={"n_trials": 1, "num_epochs": 1},
    )
    assert params.model.input_size == size
    study, _ = run_search(params, easy_images(20, size=size), easy_images(10, seed=1, size=size))
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["trainable_params"] > 0


def test_a_checkpoint_of_another_arch_is_named_before_any_trial(tmp_path, tiny_archs):
    green_file(tmp_path / "retfoundgreen_statedict.pth")
    params = tiny_params(tmp_path, tmp_path / "retfoundgreen_statedict.pth")  # arch vit_demo
    with pytest.raises(CheckpointError) as err:
        run_search(params, easy_images(20), easy_images(10, seed=1))
    message = str(err.value)
    assert "does not fit model.arch vit_demo" in message and "\n" not in message
    assert message.endswith(f"(it fits model.arch {GREEN})")
    assert not list(params.hpo.study_dir.glob("artifacts/*"))


def test_a_green_file_of_another_grid_is_refused(tmp_path, tiny_archs):
    green_file(tmp_path / "green224.pth", img_size=224)
    message = r"green224.pth: its position grid is for 224 px, but RETFound-Green .* takes its "
    with pytest.raises(CheckpointError, match=message + "released 392 px weights"):
        load_retfound_checkpoint(build_backbone(ModelConfig(arch=GREEN)), tmp_path / "green224.pth")

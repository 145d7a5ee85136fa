import pytest
import torch

from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.adapters import build_model
from retfound_hpo.training.optim import build_optimizer, warmup_cosine


def test_layer_decay_scales_learning_rate_by_depth(mae_checkpoint):
    model = build_model(ModelConfig(checkpoint=str(mae_checkpoint)), 4, 16, 0.0)
    opt = build_optimizer(model, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    named = dict(model.named_parameters())
    block0 = next(p for n, p in named.items() if "blocks.0." in n and "lora_A" in n)
    block3 = next(p for n, p in named.items() if "blocks.3." in n and "lora_A" in n)
    head = next(p for n, p in named.items() if "head" in n and p.requires_grad and p.ndim == 2)
    # 4 blocks: head at layer 5 (scale 1), block 3 at layer 4 (0.5), block 0 at layer 1 (0.5^4)
    assert lr_of[id(head)] == pytest.approx(1e-3)
    assert lr_of[id(block3)] == pytest.approx(5e-4)
    assert lr_of[id(block0)] == pytest.approx(1e-3 * 0.5**4)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}  # no decay on biases


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[8] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_full_fine_tuning_leaves_tokens_and_position_embeddings_undecayed(mae_checkpoint):
    """As RETFound's param_groups_lrd: no weight decay for 1-d weights, cls_token, pos_embed;
    the embeddings at layer 0 (the lowest learning rate)."""
    cfg = ModelConfig(checkpoint=str(mae_checkpoint), adaptation="full")
    model = build_model(cfg)
    opt = build_optimizer(model, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(group_of) == len(named)  # every weight trains
    for name in ("cls_token", "pos_embed", "blocks.0.norm1.weight", "head.bias"):
        assert group_of[id(named[name])]["weight_decay"] == 0.0, name
    for name in ("patch_embed.proj.weight", "blocks.2.mlp.fc1.weight", "head.weight"):
        assert group_of[id(named[name])]["weight_decay"] == 0.05, name
    assert group_of[id(named["pos_embed"])]["lr"] == pytest.approx(1e-3 * 0.5**5)  # layer 0

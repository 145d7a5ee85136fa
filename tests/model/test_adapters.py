"""The three adaptations, each on a tiny model: what trains, one epoch of training, the delivery
on disk, its reload, retfound-predict and the merged export."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import easy_images, fundus_like
from retfound_hpo.core.params import ModelConfig, TrainConfig
from retfound_hpo.data.preprocess import preprocess_image
from retfound_hpo.evaluation.predict import main as predict_main
from retfound_hpo.model.adapters import build_model, count_trainable
from retfound_hpo.model.export import export_merged, load_merged
from retfound_hpo.model.saved import load_trained_model, save_trained_model
from retfound_hpo.training.hparams import resolve_hparams, train_with_hparams
from retfound_hpo.training.inference import predict_proba

HEAD = 192 * 5 + 5
# What each adaptation trains (demo ViT: 4 blocks, dim 192), and the files it delivers.
LORA = {n for b in range(4) for n in (f"blocks.{b}.attn.qkv.lora_A", f"blocks.{b}.attn.qkv.lora_B")}
ADAPTER = ["adapter_config.json", "adapter_model.safetensors"]
EXPECTED = {
    # adapters (rank 4: 192 in, 576 out) + head + fc_norm (MAE pooling)
    "lora": (4 * 4 * (192 + 576) + HEAD + 2 * 192, ADAPTER),
    "full": (None, ["model.safetensors"]),  # every parameter of the model
    "linear_probe": (HEAD, ["head.safetensors"]),
}


def trained_parts(names: set[str]) -> set[str]:
    """Parameter names without PEFT's wrapping, e.g. blocks.0.attn.qkv.lora_A, head.weight."""
    out = set()
    for name in names:
        name = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        out.add(name.replace(".default.weight", "").replace(".default", ""))
    return out


def logits(model, size=32):
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("adaptation", ["lora", "full", "linear_probe"])
def test_each_adaptation_trains_saves_reloads_and_predicts(tmp_path, mae_checkpoint, adaptation):
    cfg = ModelConfig(
        checkpoint=str(mae_checkpoint), input_size=32, adaptation=adaptation, drop_path_rate=0.0
    )
    train_cfg = TrainConfig(class_balance="none")
    drawn = {"learning_rate": 1e-2, "batch_size": 16, "dropout": 0.1}
    if adaptation == "lora":
        drawn["lora_r"] = 4
    hparams = resolve_hparams(drawn, cfg, train_cfg)
    assert ("lora_alpha" in hparams) == (adaptation == "lora")  # no LoRA values without LoRA
    torch.manual_seed(0)
    model = build_model(cfg, lora_r=4, lora_alpha=16, dropout=0.1)
    expected_count, expected_files = EXPECTED[adaptation]
    total = sum(p.numel() for p in model.parameters())
    assert count_trainable(model) == (total if adaptation == "full" else expected_count)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # One epoch (two optimizer steps) as a trial runs it: what trains moves, nothing else does.
    model, result = train_with_hparams(
        hparams, cfg, train_cfg, seed=0, metric="accuracy", epochs=1, patience=1,
        train=easy_images(32), val=easy_images(10, seed=1),
    )  # fmt: skip
    assert result.trainable_params == count_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == trainable
    parts = trained_parts(trainable)
    if adaptation == "lora":
        assert parts == LORA | {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    elif adaptation == "linear_probe":  # RETFound's lp: the head alone, not even fc_norm
        assert parts == {"head.weight", "head.bias"}
    else:
        assert parts == {n for n, _ in model.named_parameters()}

    # The delivery: only what the adaptation needs, and it reloads to the same model.
    folder = tmp_path / "model"
    save_trained_model(model, folder, cfg, {"dropout": 0.1})
    saved = sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors"))
    assert saved == sorted([*expected_files, "model_config.json"])
    reloaded, config = load_trained_model(folder)
    assert config["model"]["adaptation"] == adaptation
    torch.testing.assert_close(logits(reloaded), logits(model), atol=1e-5, rtol=1e-5)

    # retfound-predict grades photographs with it, as the evaluation stage's reload does.
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(fundus_like(rng)).save(images / f"eye{i}.png")
    predict_main([str(folder), str(images), str(tmp_path / "grades.csv")])
    grades = pd.read_csv(tmp_path / "grades.csv")
    prepared = np.stack([preprocess_image(str(p), 32) for p in sorted(images.iterdir())])
    expected = predict_proba(reloaded, prepared)
    np.testing.assert_allclose(grades[[f"prob_{c}" for c in range(5)]], expected, atol=2e-6)

    # The merged export: one plain state dict, the same outputs.
    export_merged(folder, tmp_path / "merged")
    merged, _ = load_merged(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(logits(merged), logits(model), atol=1e-5, rtol=1e-5)


def test_a_full_fine_tune_needs_no_retfound_checkpoint_to_reload(tmp_path, mae_checkpoint):
    """The full state dict stands alone; the head of a linear probe needs its backbone."""
    folders = {}
    for adaptation in ("full", "linear_probe"):
        cfg = ModelConfig(checkpoint=str(mae_checkpoint), input_size=32, adaptation=adaptation)
        folders[adaptation] = tmp_path / adaptation
        save_trained_model(build_model(cfg), folders[adaptation], cfg, {})
    mae_checkpoint.unlink()
    load_trained_model(folders["full"])
    with pytest.raises(Exception, match="model.checkpoint: .* not found"):
        load_trained_model(folders["linear_probe"])

"""Model delivery: retfound-predict on unseen images, adapter reload, merged export."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retfound_hpo.config import ModelConfig
from retfound_hpo.data.preprocess import prepare_images
from retfound_hpo.data.synthetic import CAMERA_A, CAMERA_B, render_fundus
from retfound_hpo.evaluate import evaluate_datasets
from retfound_hpo.export import MERGED_FILE, export_merged, load_merged
from retfound_hpo.model import build_model, load_trained_model, save_trained_model
from retfound_hpo.predict import main as predict_main

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "models/demo_backbone/checkpoint.pth"
PROBS = [f"prob_{c}" for c in range(5)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder as train-best writes it, with non-trivial LoRA and head weights."""
    out = tmp_path_factory.mktemp("model")
    cfg = ModelConfig(checkpoint=str(CHECKPOINT), input_size=96)
    torch.manual_seed(0)
    model = build_model(cfg, 4, 16, 0.1)
    with torch.no_grad():  # LoRA B starts at zero, the head near zero: make both matter
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
        model.base_model.model.head.modules_to_save["default"].weight.normal_(0, 0.1)
    save_trained_model(model, out, cfg, {"lora_r": 4, "lora_alpha": 16, "dropout": 0.1})
    return out


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """Fundus photographs the pipeline never saw: PNG and JPEG, both cameras, every grade."""
    folder = tmp_path_factory.mktemp("new_images")
    for i in range(8):
        rng = np.random.default_rng([123, i])
        img = render_fundus(i % 5, rng, CAMERA_A if i % 2 else CAMERA_B, lesion_scale=2.0)
        suffix = ".jpg" if i % 3 == 0 else ".png"
        Image.fromarray(img).save(folder / f"eye_{i}{suffix}", quality=90)
    return folder


def logits(model, seed=0):
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def test_predict_matches_evaluate(tmp_path, model_dir, new_images):
    out = tmp_path / "predictions.csv"
    predict_main([str(model_dir), str(new_images), str(out), "--batch-size", "3"])
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == ["id", "path", "pred_grade", *PROBS]
    assert len(predicted) == 8 and predicted[PROBS].sum(axis=1).round(4).eq(1).all()

    # evaluate-cross-dataset on the same images, prepared as prepare-split prepares them
    paths = sorted(new_images.iterdir())
    table = pd.DataFrame(
        {"id": [p.stem for p in paths], "grade": 0, "path": [str(p) for p in paths]}
    )
    prepared = prepare_images(table.assign(patient=table["id"]), tmp_path / "prepared", 96, 1)
    model, _ = load_trained_model(model_dir)
    evaluate_datasets(model, {"new": prepared}, tmp_path / "eval", bootstrap_samples=0)
    evaluated = pd.read_csv(tmp_path / "eval/datasets/new/predictions.csv")
    assert predicted["id"].tolist() == evaluated["id"].tolist()
    assert predicted["pred_grade"].tolist() == evaluated["pred_grade"].tolist()
    np.testing.assert_allclose(predicted[PROBS], evaluated[PROBS], atol=2e-6)
    assert predicted[PROBS].std().max() > 0.02  # images get different outputs

    # a CSV of paths (with ids) gives the same grades
    listing = tmp_path / "list.csv"
    pd.DataFrame({"id": [f"x{i}" for i in range(8)], "path": table["path"]}).to_csv(listing)
    predict_main([str(model_dir), str(listing), str(tmp_path / "from_csv.csv")])
    from_csv = pd.read_csv(tmp_path / "from_csv.csv")
    assert from_csv["id"].tolist() == [f"x{i}" for i in range(8)]
    np.testing.assert_allclose(from_csv[PROBS], predicted[PROBS], atol=2e-6)


def run_predict(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "retfound_hpo.predict", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_unreadable_image_is_one_line_error(tmp_path, model_dir, new_images):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.open(next(new_images.glob("*.png"))).save(folder / "a_good.png")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out.csv"
    proc = run_predict(model_dir, folder, out)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {folder / 'b_broken.png'}: cannot read image")
    assert not out.exists()  # nothing half-written


def test_bad_model_dir_and_input_are_one_line_errors(tmp_path, model_dir, new_images, capsys):
    for args, message in [
        ([tmp_path / "no_model", new_images], "not a model folder (no model_config.json)"),
        ([model_dir, tmp_path / "nothing"], "no such folder or CSV file"),
        ([model_dir, tmp_path], "no images (.png, .jpg"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            predict_main([*map(str, args), str(tmp_path / "out.csv")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_adapter_reloads_in_fresh_process(tmp_path, model_dir):
    expected = logits(load_trained_model(model_dir)[0])
    # What a user of models/best_model does: plain peft on the backbone its config describes.
    script = """
import json, sys, torch
from peft import PeftModel
from retfound_hpo.config import ModelConfig
from retfound_hpo.model import build_backbone, load_retfound_checkpoint
raw = json.load(open(f"{sys.argv[1]}/model_config.json"))["model"]
cfg = ModelConfig(**{**raw, "lora_targets": tuple(raw["lora_targets"])})
backbone = build_backbone(cfg)
load_retfound_checkpoint(backbone, cfg.checkpoint)
model = PeftModel.from_pretrained(backbone, sys.argv[1]).eval()
x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    torch.save(model(x), sys.argv[2])
"""
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", script, str(model_dir), str(out)], check=True)
    reloaded = torch.load(out, weights_only=True)
    assert torch.equal(reloaded, expected)
    assert expected.std() > 0.1  # LoRA and head matter: not the untrained head's near-zeros


def test_merged_export_matches_peft(tmp_path, model_dir, new_images):
    peft_model, _ = load_trained_model(model_dir)
    export_merged(model_dir, tmp_path / "merged")
    assert (tmp_path / "merged" / MERGED_FILE).is_file()
    merged, config = load_merged(tmp_path / "merged")  # plain timm ViT, strict state dict
    assert not any("lora" in k for k in merged.state_dict())
    assert type(merged).__name__ == "VisionTransformer" and config["merged"] is True
    torch.testing.assert_close(logits(merged), logits(peft_model), atol=1e-5, rtol=1e-5)
    # predict accepts the merged export and grades as the adapter does
    predict_main([str(tmp_path / "merged"), str(new_images), str(tmp_path / "m.csv")])
    predict_main([str(model_dir), str(new_images), str(tmp_path / "a.csv")])
    a, m = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "m.csv")
    assert a["pred_grade"].tolist() == m["pred_grade"].tolist()
    np.testing.assert_allclose(a[PROBS], m[PROBS], atol=1e-4)

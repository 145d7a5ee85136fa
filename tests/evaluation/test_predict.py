"""Model delivery: retfound-predict on unseen images, adapter reload, merged export."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO, follow_captured_stderr, run_main
from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.data.demo.render import CAMERA_A, CAMERA_B, render_fundus
from retfound_hpo.data.preprocess import prepare_images
from retfound_hpo.evaluation.evaluate import evaluate_datasets
from retfound_hpo.evaluation.predict import main as predict_main
from retfound_hpo.model.adapters import build_model
from retfound_hpo.model.backbones import CLASS_TOKEN, POOLING
from retfound_hpo.model.export import MERGED_FILE, export_merged, load_merged
from retfound_hpo.model.saved import load_trained_model, save_trained_model

CHECKPOINT = REPO / "models/demo_backbone/checkpoint.pth"
PROBS = [f"prob_{c}" for c in range(5)]


def trained_model_dir(out: Path, checkpoint: Path) -> Path:
    """A model folder as train-best writes it, with non-trivial LoRA, norm and head weights."""
    cfg = ModelConfig(checkpoint=str(checkpoint), input_size=96)
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
def model_dir(tmp_path_factory):
    return trained_model_dir(tmp_path_factory.mktemp("model"), CHECKPOINT)


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
    assert list(predicted.columns) == ["id", "path", "pred_grade", *PROBS, "ungradable", "reason"]
    assert not predicted["ungradable"].any()
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


def test_an_unreadable_image_is_flagged_and_the_others_graded(
    tmp_path, model_dir, new_images, capsys, caplog
):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.open(next(new_images.glob("*.png"))).save(folder / "a_good.png")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out.csv"
    code, stderr = run_main(predict_main, [str(model_dir), str(folder), str(out)], capsys)
    assert code == 0, stderr
    table = pd.read_csv(out, keep_default_na=False).set_index("id")
    assert table.loc["a_good", "ungradable"] == False and table.loc["a_good", "pred_grade"] != ""  # noqa: E712
    broken = table.loc["b_broken"]
    assert broken["ungradable"] == True and broken["pred_grade"] == ""  # noqa: E712
    assert broken["reason"].startswith("cannot read image (")
    warning = f"{folder / 'b_broken.png'}: ungradable, no grade given (cannot read image"
    assert warning in caplog.text


def test_what_cannot_be_a_photograph_is_flagged_ungradable_not_graded(
    tmp_path, model_dir, new_images
):
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted(new_images.glob("*.png"))[:2]:
        shutil.copy(p, folder / p.name)
    Image.new("RGB", (400, 400), (255, 255, 255)).save(folder / "white.png")
    Image.new("RGB", (4000, 10), (120, 60, 30)).save(folder / "strip.png")
    out = tmp_path / "out.csv"
    predict_main([str(model_dir), str(folder), str(out)])
    table = pd.read_csv(out, keep_default_na=False).set_index("id")
    flagged = table[table["ungradable"]]
    assert sorted(flagged.index) == ["strip", "white"]
    assert (flagged["pred_grade"] == "").all() and (flagged[PROBS] == "").all().all()
    assert "pure white" in flagged.loc["white", "reason"]
    assert "an aspect ratio of 400.0:1" in flagged.loc["strip", "reason"]
    graded = table[~table["ungradable"]]
    assert len(graded) == 2 and graded["pred_grade"].astype(int).between(0, 4).all()


def test_an_existing_output_is_refused_before_any_work(tmp_path, new_images, capsys):
    out = tmp_path / "out.csv"
    out.write_text("keep me\n")
    with pytest.raises(SystemExit) as stop:  # the model folder is not even opened
        predict_main([str(tmp_path / "no_model"), str(new_images), str(out)])
    assert stop.value.code == 2
    assert f"{out}: already exists" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    with pytest.raises(SystemExit):
        predict_main([str(tmp_path / "no_model"), str(new_images), str(tmp_path)])
    assert "a folder; name the CSV file" in capsys.readouterr().err


def test_bad_model_dir_and_input_are_one_line_errors(tmp_path, model_dir, new_images, capsys):
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    for args, message in [
        ([tmp_path / "no_model", new_images], "not a model folder (no model_config.json)"),
        ([model_dir, tmp_path / "nothing"], "no such folder or CSV file"),
        ([model_dir, tmp_path], "no images (.png, .jpg"),
        ([model_dir, next(new_images.glob("*.png"))], "an image; give its folder, or a CSV"),
        ([model_dir, binary], "binary.csv: not a readable CSV ("),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            predict_main([*map(str, args), str(tmp_path / "out.csv")])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow  # a second Python process: the full test command runs it
def test_adapter_reloads_in_fresh_process(tmp_path, model_dir):
    expected = logits(load_trained_model(model_dir)[0])
    # What a user of models/best_model does: plain peft on the backbone its config describes.
    script = """
import json, sys, torch
from peft import PeftModel
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.model.backbones import build_backbone
from retfound_hpo.model.checkpoints import load_retfound_checkpoint
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


def dinov2_checkpoint(folder: Path) -> Path:
    """The demo backbone in RETFound-DINOv2's layout: `teacher`, `backbone.`, final norm."""
    state = torch.load(CHECKPOINT, weights_only=True)["model"]
    teacher = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("decoder_")}
    torch.save({"teacher": teacher}, folder / "dinov2.pth")
    return folder / "dinov2.pth"


def test_cls_pooled_model_saves_exports_and_predicts(tmp_path, new_images, monkeypatch):
    """RETFound-DINOv2's pooling (CLS token, trained final norm) at demo size: the adapter
    reloads, the merged export loads strictly, and both grade alike."""
    monkeypatch.setitem(POOLING, "vit_demo", CLASS_TOKEN)
    model_dir = trained_model_dir(tmp_path / "model", dinov2_checkpoint(tmp_path))

    adapter, _ = load_trained_model(model_dir)
    vit = adapter.base_model.model
    trained_norm = vit.norm.modules_to_save["default"].weight
    pretrained_norm = torch.load(CHECKPOINT, weights_only=True)["model"]["norm.weight"]
    assert not torch.equal(trained_norm, pretrained_norm.float())  # trained, and saved
    export_merged(model_dir, tmp_path / "merged")
    merged, _ = load_merged(tmp_path / "merged")
    assert torch.equal(merged.norm.weight, trained_norm) and merged.global_pool == "token"
    torch.testing.assert_close(logits(merged), logits(adapter), atol=1e-5, rtol=1e-5)
    predict_main([str(model_dir), str(new_images), str(tmp_path / "a.csv")])
    predict_main([str(tmp_path / "merged"), str(new_images), str(tmp_path / "m.csv")])
    a, m = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "m.csv")
    np.testing.assert_allclose(a[PROBS], m[PROBS], atol=1e-4)
    assert a[PROBS].std().max() > 0.02


# Broken model folders and inputs: one line naming the file, exit code 2, no output written.
def copy_model(model_dir: Path, to: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(model_dir, to, ignore=shutil.ignore_patterns(*drop))
    return to


@pytest.mark.parametrize("case", ["no_weights", "corrupt_config", "empty_csv", "html_checkpoint"])
def test_broken_model_folder_or_input_is_one_line(tmp_path, model_dir, new_images, case, capsys):
    model, images = tmp_path / "model", new_images
    if case == "no_weights":
        copy_model(model_dir, model, drop=("adapter_*",))
        message = f"{model}: no model weights: no adapter_config.json and "
        message += "adapter_model.safetensors (the LoRA adapter train-best writes for "
        message += "model.adaptation lora)"
    elif case == "corrupt_config":
        copy_model(model_dir, model)
        config = model / "model_config.json"
        config.write_text(config.read_text()[:40])  # cut off mid-write
        message = f"{config}: unreadable ("
    elif case == "empty_csv":
        copy_model(model_dir, model)
        images = tmp_path / "images.csv"
        images.write_bytes(b"")
        message = f"{images}: empty file (no header, no rows)"
    else:  # the RETFound checkpoint the adapter needs is a saved login page
        copy_model(model_dir, model)
        page = tmp_path / "RETFound_cfp_weights.pth"
        page.write_text("<!DOCTYPE html><html><body>Please sign in</body></html>")
        config = json.loads((model / "model_config.json").read_text())
        config["model"]["checkpoint"] = str(page)
        (model / "model_config.json").write_text(json.dumps(config))
        message = f"{page}: an HTML page, not a checkpoint"
    out = tmp_path / "out" / "predictions.csv"
    capsys.readouterr()
    follow_captured_stderr()
    with pytest.raises(SystemExit) as stop:  # in process: test_unreadable_image runs a real one
        predict_main([str(model), str(images), str(out)])
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert lines[0].startswith(f"error: {message}"), lines[0]
    assert not out.parent.exists()  # nothing written, not even a temporary file


def write_config(model: Path, config) -> None:
    (model / "model_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("empty", r"model_config.json: unreadable \(Expecting value"),
        ("list", r"model_config.json: needs a 'model' mapping"),
        ("no_model", r"model_config.json: needs a 'model' mapping"),
        ("hparams", r"model_config.json: needs a 'model' mapping \(and 'hparams', a mapping\)"),
        ("unknown_key", r"model_config.json: model.depth: 24 is not a ModelConfig value"),
        ("wrong_type", r"model_config.json: model.input_size: '96px' is not a ModelConfig value"),
        ("arch", r"model_config.json: model.arch: 'vit_huge' is not one of \['vit_demo'"),
    ],
)  # fmt: skip
def test_broken_model_config_is_a_checkpoint_error(tmp_path, model_dir, change, message):
    config = json.loads((model_dir / "model_config.json").read_text())
    changed = {
        "empty": "",
        "list": [config],
        "no_model": {"hparams": config["hparams"]},
        "hparams": {**config, "hparams": 0.1},
        "unknown_key": {**config, "model": {**config["model"], "depth": 24}},
        "wrong_type": {**config, "model": {**config["model"], "input_size": "96px"}},
        "arch": {**config, "model": {**config["model"], "arch": "vit_huge"}},
    }[change]
    adapter = copy_model(model_dir, tmp_path / "adapter")
    export_merged(model_dir, tmp_path / "merged")
    for folder in (adapter, tmp_path / "merged"):  # what train-best and the export write
        if change == "empty":
            (folder / "model_config.json").write_text("")
        else:
            write_config(folder, changed)
    with pytest.raises(CheckpointError, match=message):
        load_trained_model(adapter)
    with pytest.raises(CheckpointError, match=message):
        load_merged(tmp_path / "merged")


def test_damaged_weights_are_checkpoint_errors(tmp_path, model_dir):
    adapter = copy_model(model_dir, tmp_path / "adapter")
    export_merged(model_dir, tmp_path / "merged")
    for name, folder in [
        ("adapter_model.safetensors", adapter),
        (MERGED_FILE, tmp_path / "merged"),
    ]:
        (folder / name).write_bytes((folder / name).read_bytes()[:100])  # a cut-off copy
    with pytest.raises(CheckpointError, match=r"adapter_model.safetensors: corrupt \("):
        load_trained_model(adapter)
    with pytest.raises(CheckpointError, match=rf"merged/{MERGED_FILE}: corrupt \("):
        load_merged(tmp_path / "merged")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no adapter_model.safetensors \(the LoRA adapter"):
        load_trained_model(adapter)


def test_model_trained_with_other_pooling_is_an_error(tmp_path, monkeypatch):
    """A model saved with the MAE pooling, for an arch that now pools the CLS token (as
    vit_large_patch14_dinov2 did before it followed RETFound-DINOv2): an error, not wrong grades."""
    model_dir = trained_model_dir(tmp_path / "model", dinov2_checkpoint(tmp_path))  # fits both
    export_merged(model_dir, tmp_path / "merged")
    monkeypatch.setitem(POOLING, "vit_demo", CLASS_TOKEN)
    with pytest.raises(CheckpointError, match=r"adapter trains \[.*'fc_norm'.*\], but vit_demo"):
        load_trained_model(model_dir)
    with pytest.raises(CheckpointError, match=r"does not fit model.arch vit_demo.*'fc_norm.bias'"):
        load_merged(tmp_path / "merged")

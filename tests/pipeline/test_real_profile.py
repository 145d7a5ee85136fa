"""The real profile, as README writes it: APTOS-2019 and EyePACS in their native layouts at full
camera size, ViT-Large/16 from a checkpoint in RETFound's MAE layout, through all five stages
with `dvc exp run`, on CPU. Only the budget is the test's own: one trial of one epoch, and 112 px
inputs instead of the arch's 224 (a quarter of the tokens: ViT-Large on one core of a shared
machine took 190 s at 224; tests/model/test_checkpoints.py loads the same layout at 224)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO, copy_repo, sh
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.data.demo.render import CAMERA_A, CAMERA_B, render_fundus
from retfound_hpo.model.backbones import build_backbone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # ViT-Large on 2 CPU cores

# Full camera sizes as the two data sets hold them (APTOS PNGs span 640 px to 3216x2136).
APTOS_SIZES = [(3216, 2136), (2416, 1736), (2048, 1536)]
EYEPACS_SIZES = [(3888, 2592), (2592, 1944)]
# One trial of one epoch at batch 4: what 2 CPU cores can do with ViT-Large in a few minutes.
# Val and test at a quarter each let 4 photographs per grade stratify (7 at 15 %): 20 ViT-Large
# photographs instead of 35 halve the test's time; the layouts, sizes and model are the real ones.
TEST_BUDGET = (
    " -S data.val_fraction=0.25 -S data.test_fraction=0.25"
    " -S hpo.n_trials=1 -S hpo.num_epochs=1 -S train_best.epochs=1"
    " -S 'hpo.search_space.lora.batch_size.choices=[4]' -S train.eval_batch_size=8"
    " -S evaluate.bootstrap_samples=50 -S model.input_size=112"
)


def readme_command() -> str:
    """The one command of README's "Your data and RETFound" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your data and RETFound\n", 1)[1].split("\n## ", 1)[0]
    (command,) = [b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if "dvc exp" in b]
    return command.strip()


def photograph(grade: int, seed: int, camera, size: tuple[int, int]) -> Image.Image:
    """A synthetic fundus photograph blown up to a real camera's frame size."""
    pixels = render_fundus(grade, np.random.default_rng(seed), camera, lesion_scale=2.0)
    return Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)


def write_aptos(root, per_grade: int = 4) -> None:
    (root / "train_images").mkdir(parents=True)
    rows = []
    for i in range(5 * per_grade):
        grade, name = i % 5, f"{i:04x}a7f3c2e1"
        size = APTOS_SIZES[i % len(APTOS_SIZES)]
        photograph(grade, i, CAMERA_A, size).save(
            root / "train_images" / f"{name}.png", compress_level=1
        )
        rows.append(f"{name},{grade}")
    (root / "train.csv").write_text("id_code,diagnosis\n" + "\n".join(rows) + "\n")


def write_eyepacs(root, patients: int = 3) -> None:
    """EyePACS: both eyes of each patient; one JPEG stored sideways with an EXIF orientation."""
    (root / "train").mkdir(parents=True)
    rows = []
    for p in range(patients):
        for eye in ("left", "right"):
            name, grade = f"{10 + p}_{eye}", (p + (eye == "right")) % 5
            image = photograph(
                grade, 1000 + 2 * p + (eye == "right"), CAMERA_B, EYEPACS_SIZES[p % 2]
            )
            exif = Image.Exif()
            if name == "10_left":  # a camera that stores pixels sideways and says so
                image = image.transpose(Image.Transpose.ROTATE_90)
                exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
            image.save(root / "train" / f"{name}.jpeg", quality=90, exif=exif)
            rows.append(f"{name},{grade}")
    (root / "trainLabels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")


def write_vit_large_mae_checkpoint(path) -> None:
    """RETFound_cfp_weights.pth's layout: ViT-L encoder + final norm + MAE decoder, under
    `model`. The random weights are views of one buffer, so the file is small and quick."""
    with torch.device("meta"):
        shapes = build_backbone(ModelConfig(arch="vit_large_patch16_224", input_size=224))
    encoder_shapes = {
        k: v.shape
        for k, v in shapes.state_dict().items()
        if not k.startswith(("head.", "fc_norm."))
    }
    largest = max(s.numel() for s in encoder_shapes.values())
    buffer = torch.randn(largest + 4096, generator=torch.Generator().manual_seed(0)) * 0.02
    state = {
        k: buffer[i % 4096 : i % 4096 + s.numel()].view(s)
        for i, (k, s) in enumerate(encoder_shapes.items())
    }
    state |= {
        "norm.weight": torch.ones(1024),
        "norm.bias": torch.zeros(1024),
        "mask_token": torch.zeros(1, 1, 512),
        "decoder_embed.weight": torch.zeros(512, 1024),
        "decoder_pos_embed": torch.zeros(1, 197, 512),
        "decoder_pred.weight": torch.zeros(768, 512),
    }
    torch.save({"model": state, "epoch": 799}, path)


def test_readme_real_profile_runs_every_stage(tmp_path):
    repo = tmp_path / "repo"
    copy_repo(repo)
    sh("git init -q && git add -A && git commit -qm init", repo)
    write_aptos(repo / "data/raw/aptos")
    write_eyepacs(repo / "data/raw/eyepacs")
    write_vit_large_mae_checkpoint(repo / "models/RETFound_cfp_weights.pth")
    assert sh("git status --porcelain", repo) == ""  # the data and weights stay out of git

    sh(readme_command() + TEST_BUDGET, repo)

    summary = json.loads((repo / "results/data/summary.json").read_text())
    assert summary["image_size"] == 112
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == 20
    study = repo / "results/optuna/aptos_retfound_lora"
    (trial,) = pd.read_csv(study / "trials.csv").itertuples()
    assert trial.state == "COMPLETE" and trial.epochs_run == 1 and trial.batch_size == 4
    assert 1e-5 <= trial.learning_rate <= 1e-3  # RETFound's range, not the demo's
    config = json.loads((study / "config.json").read_text())
    assert config["model"]["arch"] == "vit_large_patch16_224"
    assert (repo / "models/best_model/adapter_model.safetensors").is_file()
    model_config = json.loads((repo / "models/best_model/model_config.json").read_text())
    assert model_config["model"]["checkpoint"] == "models/RETFound_cfp_weights.pth"
    metrics = json.loads((repo / "results/eval/metrics.json").read_text())
    assert set(metrics) == {"val", "test", "eyepacs"} and metrics["eyepacs"]["n_images"] == 6
    preds = pd.read_csv(repo / "results/eval/datasets/eyepacs/predictions.csv")
    assert sorted(preds["id"]) == sorted(
        f"{10 + p}_{e}" for p in range(3) for e in ("left", "right")
    )
    assert "up to date" in sh("dvc status", repo)

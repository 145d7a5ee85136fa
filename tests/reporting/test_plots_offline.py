"""Offline rendering: `dvc plots show` with the shipped template, and export-report's HTML plots,
opened in headless Chromium with name resolution off, checked from screenshots."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
TEMPLATE = REPO / "assets/dvc_plots_template.html"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium")]  # skipped only off CI


def screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    """Render a local page offline (every host name fails to resolve); pixels (H, W, 3)."""
    png = tmp_path / f"{page.parent.name}_{page.stem}.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # a CDN script cannot load, even on a networked CI
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={png}",
        "--window-size=1000,800",
        "--virtual-time-budget=5000",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"no screenshot of {page}: {proc.stderr[-2000:]}"
    return np.asarray(Image.open(png).convert("RGB"))


def looks_drawn(pixels: np.ndarray) -> bool:
    """Plots, not a blank page: enough non-white pixels in enough distinct colours."""
    non_white = (pixels < 240).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    return non_white > 0.03 and colours > 50


def dvc(*args: str, cwd: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def test_dvc_plots_show_renders_offline(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):  # the project's real plot definitions
        shutil.copy(REPO / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 9)
    history = pd.DataFrame({"epoch": epochs, "val_accuracy": 40 + 4 * epochs})
    for metric in ("val_kappa", "val_auroc", "val_f1"):
        history[metric] = np.sort(rng.uniform(0.2, 0.9, len(epochs)))
    (repo / "results/train").mkdir(parents=True)
    history.to_csv(repo / "results/train/history.csv", index=False)
    study = repo / "results/optuna/retfound_lora_search"
    study.mkdir(parents=True)
    accuracy = rng.uniform(30, 80, 10)
    trials = pd.DataFrame(
        {"trial_number": range(10), "best_val_acc": accuracy, "objective": accuracy}
    )
    trials.assign(state="COMPLETE").to_csv(study / "trials.csv", index=False)
    (repo / "results/eval/confusion").mkdir(parents=True)
    actual = rng.integers(0, 5, 200)
    predicted = np.where(rng.random(200) < 0.7, actual, rng.integers(0, 5, 200))
    confusion = pd.DataFrame({"actual": actual, "predicted": predicted})
    confusion.to_csv(repo / "results/eval/confusion/test.csv", index=False)

    dvc("plots", "show", "--html-template", str(TEMPLATE), "-o", "offline", cwd=repo)
    page = repo / "offline/index.html"
    html = page.read_text()
    assert "cdn.jsdelivr" not in html
    for title in ("HPO objective per trial", "learning curve", "confusion/test.csv"):
        assert title in html
    assert looks_drawn(screenshot(page, tmp_path))

    # Control: DVC's default page loads vega from a CDN, so offline it stays blank.
    dvc("plots", "show", "-o", "cdn", cwd=repo)
    assert not looks_drawn(screenshot(repo / "cdn/index.html", tmp_path))


def test_report_html_plots_render_offline(tmp_path):
    import optuna

    from retfound_hpo.reporting.report import write_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {
        "lora_r": {"type": "categorical", "choices": [4, 8, 16]},
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }

    def objective(trial: optuna.Trial) -> float:
        r = trial.suggest_categorical("lora_r", [4, 8, 16])
        lr = trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        return 80 - 10 * abs(np.log10(lr) + 2.5) + r / 4

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(objective, n_trials=8)
    write_report(study, tmp_path / "report", space, png_backend="matplotlib")
    plots = tmp_path / "report/plots"
    assert (plots / "plotly.min.js").is_file()
    for name in ("optimization_history", "slice_plots"):
        assert looks_drawn(screenshot(plots / f"{name}.html", tmp_path)), name

    # Control: without its sibling plotly.min.js the same page stays blank.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(plots / "optimization_history.html", alone)
    assert not looks_drawn(screenshot(alone / "optimization_history.html", tmp_path))

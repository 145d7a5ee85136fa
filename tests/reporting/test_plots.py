"""PNG backends: kaleido (plotly + Chromium) when a browser exists, matplotlib otherwise."""

import logging

import optuna
import pytest
from PIL import Image
from test_report import SPACE, assert_valid_plots, make_study

from retfound_hpo.reporting import png
from retfound_hpo.reporting.report import write_report


def test_auto_falls_back_to_matplotlib_once(tmp_path, monkeypatch, caplog):
    def broken_export(*args):
        raise RuntimeError("browser crashed")

    monkeypatch.setattr(png, "find_chrome", lambda: "/opt/fake/chrome")
    monkeypatch.setattr(png, "_kaleido_png", broken_export)
    study = make_study(3)  # its trials' own warnings (a failing trial) are not the point here
    with caplog.at_level(logging.WARNING, logger="retfound_hpo"):
        text = write_report(study, tmp_path, SPACE).read_text()
    ours = [r for r in caplog.records if r.name.startswith("retfound_hpo")]
    assert [r.getMessage() for r in ours if r.levelno >= logging.WARNING] == [
        "plotly PNG export failed (browser crashed); using matplotlib for the PNGs"
    ]
    assert "fell back to matplotlib after: browser crashed" in text
    assert_valid_plots(tmp_path)


def test_backend_choice_without_chrome(tmp_path, monkeypatch):
    monkeypatch.setattr(png, "find_chrome", lambda: None)
    text = write_report(optuna.create_study(), tmp_path, SPACE).read_text()
    assert "PNG backend: matplotlib (no Chrome/Chromium found)." in text
    with pytest.raises(RuntimeError, match="needs Chrome or Chromium"):
        write_report(optuna.create_study(), tmp_path, SPACE, png_backend="plotly")
    with pytest.raises(ValueError, match="png_backend"):
        write_report(optuna.create_study(), tmp_path, SPACE, png_backend="svg")


def test_kaleido_backend(tmp_path, chromium):
    text = write_report(make_study(6), tmp_path, SPACE, png_backend="plotly").read_text()
    assert "PNG backend: plotly + kaleido" in text
    assert_valid_plots(tmp_path)
    with Image.open(tmp_path / "plots" / "optimization_history.png") as img:
        assert img.size == (1350, 825)  # kaleido: the 900x550 layout at scale 1.5

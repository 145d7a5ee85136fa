import numpy as np
import pytest

from retfound_hpo.evaluation.seed_summary import find_seed_models, summarize_seeds


def test_mean_and_retfound_interval_by_hand():
    per_seed = {"42": {"kappa": 0.8}, "43": {"kappa": 0.9}, "44": {"kappa": 1.0}}
    s = summarize_seeds(per_seed)
    # mean 0.9, SD (ddof 1) 0.1, half-width 1.96 x 0.1 / sqrt(3) = 0.11316
    assert s["n"] == 3 and s["42"] == {"kappa": 0.8}
    assert s["mean"]["kappa"] == pytest.approx(0.9) and s["sd"]["kappa"] == pytest.approx(0.1)
    assert s["ci95_low"]["kappa"] == pytest.approx(0.9 - 0.196 / np.sqrt(3))
    assert s["ci95_high"]["kappa"] == pytest.approx(0.9 + 0.196 / np.sqrt(3))
    with pytest.raises(ValueError, match="two or more seeds"):
        summarize_seeds({"42": {"kappa": 0.8}})


def test_find_seed_models(tmp_path):
    assert find_seed_models(tmp_path / "none") == {}
    for name in ("10", "9", "x", "11"):
        (tmp_path / name).mkdir()
        if name != "11":  # 11: training was interrupted before the model was saved
            (tmp_path / name / "model_config.json").write_text("{}")
    assert list(find_seed_models(tmp_path)) == ["9", "10"]  # by number, not by name

import numpy as np
import pytest

from retfound_hpo.evaluation.seed_summary import find_seed_models, summarize_seeds


def test_mean_with_t_and_retfound_intervals_by_hand():
    per_seed = {
        "42": {"kappa": 0.8, "auroc": 0.97, "accuracy": 80.0},
        "43": {"kappa": 0.9, "auroc": 0.99, "accuracy": 90.0},
        "44": {"kappa": 1.0, "auroc": 1.0, "accuracy": 100.0},
    }
    s = summarize_seeds(per_seed)
    # mean 0.9, SD (ddof 1) 0.1, half-width t(0.975, 2) x 0.1 / sqrt(3) = 0.2484
    assert s["n"] == 3 and s["42"] == per_seed["42"]
    assert s["interval"].startswith("95 % t interval over 3 seeds")
    assert s["mean"]["kappa"] == pytest.approx(0.9) and s["sd"]["kappa"] == pytest.approx(0.1)
    assert s["ci95_low"]["kappa"] == pytest.approx(0.9 - 4.302653 * 0.1 / np.sqrt(3))
    assert s["ci95_high"]["kappa"] == 1.0  # clipped to kappa's range (unclipped: 1.148)
    assert s["ci95_high"]["auroc"] == 1.0 and s["ci95_high"]["accuracy"] == 100.0
    # RETFound's convention, named as such: mean +- 1.96 x SD / sqrt(n)
    r = summarize_seeds(per_seed, "retfound_1.96")
    assert r["interval"].startswith("RETFound's convention")
    assert r["ci95_low"]["kappa"] == pytest.approx(0.9 - 0.196 / np.sqrt(3))
    assert r["ci95_high"]["kappa"] == 1.0  # clipped too (unclipped: 0.9 + 0.113)
    mean, sd = r["mean"]["auroc"], r["sd"]["auroc"]
    assert r["ci95_low"]["auroc"] == pytest.approx(mean - 1.96 * sd / np.sqrt(3))
    assert r["ci95_high"]["auroc"] == 1.0  # 0.9867 + 0.0172 would pass 1
    with pytest.raises(ValueError, match="two or more seeds"):
        summarize_seeds({"42": {"kappa": 0.8}})


def test_find_seed_models(tmp_path):
    assert find_seed_models(tmp_path / "none") == {}
    for name in ("10", "9", "x", "11"):
        (tmp_path / name).mkdir()
        if name != "11":  # 11: training was interrupted before the model was saved
            (tmp_path / name / "model_config.json").write_text("{}")
    assert list(find_seed_models(tmp_path)) == ["9", "10"]  # by number, not by name

"""evaluate-cross-dataset: per-dataset metrics with intervals, predictions, confusion files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import tiny_params
from retfound_hpo.config import ModelConfig
from retfound_hpo.errors import ConfigError, DatasetError
from retfound_hpo.evaluate import evaluate_datasets
from retfound_hpo.io import write_json_atomic
from retfound_hpo.metrics import evaluation_metrics
from retfound_hpo.model import build_model


def prepared_set(folder, n: int, seed: int, size: int = 32):
    """A prepared folder as prepare-split writes it: images.npy + index.csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))
    ids = [f"img{i}" for i in range(n)]
    grades = np.arange(n) % 5
    pd.DataFrame({"id": ids, "grade": grades, "patient": ids, "path": ids}).to_csv(
        folder / "index.csv", index=False
    )
    return folder


@pytest.fixture
def model(mae_checkpoint):
    torch.manual_seed(0)
    model = build_model(ModelConfig(checkpoint=str(mae_checkpoint), input_size=32), 4, 16, 0.1)
    with torch.no_grad():  # a random head, so that predictions spread over the grades
        model.base_model.model.head.modules_to_save["default"].weight.normal_(0, 0.5)
    return model.eval()


def test_metrics_intervals_and_files(tmp_path, model):
    datasets = {
        "test": prepared_set(tmp_path / "p/test", 30, 0),
        "b": prepared_set(tmp_path / "p/b", 20, 1),
    }
    out = tmp_path / "eval"
    metrics = evaluate_datasets(model, datasets, out, bootstrap_samples=200, seed=3)
    assert list(metrics) == ["test", "b"]
    for name, m in metrics.items():
        preds = pd.read_csv(out / "datasets" / name / "predictions.csv")
        assert list(preds.columns) == ["id", "true_grade", "pred_grade"] + [
            f"prob_{c}" for c in range(5)
        ]
        assert len(preds) == m["n_images"]
        probs = preds[[f"prob_{c}" for c in range(5)]].to_numpy()
        point = evaluation_metrics(preds["true_grade"].to_numpy(), probs)
        assert m["kappa"] == pytest.approx(point["kappa"], abs=1e-4)
        for metric in point:
            assert m[f"{metric}_ci_low"] <= m[f"{metric}_ci_high"], metric
            assert 0 < m[f"{metric}_ci_n"] <= 200, metric
        assert {"referable_auroc", "sensitivity_grade_4", "accuracy_ci_low"} <= set(m)
        confusion = pd.read_csv(out / "confusion" / f"{name}.csv")
        assert list(confusion.columns) == ["actual", "predicted"]
        assert confusion["actual"].tolist() == preds["true_grade"].tolist()
        assert confusion["predicted"].tolist() == preds["pred_grade"].tolist()
        Image.open(out / "datasets" / name / "confusion_matrix.png").verify()
    # metrics.json stays valid JSON (NaN -> null) and keyed by dataset
    write_json_atomic(out / "metrics.json", metrics)
    assert set(json.loads((out / "metrics.json").read_text())) == {"test", "b"}
    # the same seed gives the same intervals
    again = evaluate_datasets(model, datasets, tmp_path / "again", bootstrap_samples=200, seed=3)
    assert again == metrics


def test_no_intervals_when_bootstrap_off(tmp_path, model):
    datasets = {"test": prepared_set(tmp_path / "p/test", 10, 0)}
    m = evaluate_datasets(model, datasets, tmp_path / "eval", bootstrap_samples=0)["test"]
    assert "kappa" in m and not [k for k in m if "_ci_" in k]


def test_bootstrap_samples_param(tmp_path, mae_checkpoint):
    assert tiny_params(tmp_path, mae_checkpoint).evaluate.bootstrap_samples == 1000
    params = tiny_params(tmp_path, mae_checkpoint, evaluate={"bootstrap_samples": 0})
    assert params.evaluate.bootstrap_samples == 0
    with pytest.raises(ConfigError, match=r"evaluate.bootstrap_samples: -5 is not allowed"):
        tiny_params(tmp_path, mae_checkpoint, evaluate={"bootstrap_samples": -5})
    with pytest.raises(ConfigError, match=r"evaluate.bootstrap_samples: expected int"):
        tiny_params(tmp_path, mae_checkpoint, evaluate={"bootstrap_samples": 1.5})


def test_empty_or_missing_dataset_stops_before_writing_anything(tmp_path, model):
    good = prepared_set(tmp_path / "p/test", 10, 0)
    empty = prepared_set(tmp_path / "p/b", 0, 1)  # e.g. a labels file whose rows were all dropped
    out = tmp_path / "eval"
    with pytest.raises(DatasetError) as info:
        evaluate_datasets(model, {"test": good, "b": empty}, out, bootstrap_samples=0)
    assert str(info.value).startswith(f"{empty}: dataset 'b' has no images to evaluate")
    assert not out.exists()  # not even the first dataset's files
    missing = tmp_path / "p/c"
    with pytest.raises(DatasetError, match=r"p/c: no prepared data \(folder not found\); run"):
        evaluate_datasets(model, {"test": good, "c": missing}, out, bootstrap_samples=0)
    assert not out.exists()

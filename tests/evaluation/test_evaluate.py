"""evaluate-cross-dataset: per-dataset metrics with intervals, the operating point, seeds, files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import tiny_params
from retfound_hpo.core.errors import ConfigError, DatasetError
from retfound_hpo.core.files import write_json_atomic
from retfound_hpo.core.params import ModelConfig
from retfound_hpo.evaluation.evaluate import evaluate_datasets
from retfound_hpo.evaluation.seed_summary import find_seed_models
from retfound_hpo.metrics.classification import evaluation_metrics
from retfound_hpo.model.adapters import build_model
from retfound_hpo.model.saved import save_trained_model

PROBS = [f"prob_{c}" for c in range(5)]


def prepared_set(folder, n: int, seed: int, size: int = 32, grades=None, patients=None):
    """A prepared folder as prepare-split writes it: images.npy + index.csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))
    ids = [f"img{i}" for i in range(n)]
    grades = np.arange(n) % 5 if grades is None else grades
    patients = ids if patients is None else patients
    pd.DataFrame({"id": ids, "grade": grades, "patient": patients, "path": ids}).to_csv(
        folder / "index.csv", index=False
    )
    return folder


def random_model(checkpoint, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(checkpoint=str(checkpoint), input_size=32), 4, 16, 0.1)
    with torch.no_grad():  # a random head, so that predictions spread over the grades
        model.base_model.model.head.modules_to_save["default"].weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture
def model(mae_checkpoint):
    return random_model(mae_checkpoint)


def test_metrics_intervals_and_files(tmp_path, model):
    datasets = {
        "val": prepared_set(tmp_path / "p/val", 30, 2),
        "test": prepared_set(tmp_path / "p/test", 30, 0),
        "b": prepared_set(tmp_path / "p/b", 20, 1),
    }
    out = tmp_path / "eval"
    metrics = evaluate_datasets(model, datasets, out, bootstrap_samples=200, seed=3)
    assert list(metrics) == ["val", "test", "b"]
    threshold = metrics["val"]["referable_threshold"]
    for name, m in metrics.items():
        preds = pd.read_csv(out / "datasets" / name / "predictions.csv")
        assert list(preds.columns) == [
            "id", "true_grade", "pred_grade", *PROBS, "patient", "p_referable", "referable"
        ]  # fmt: skip
        assert len(preds) == m["n_images"]
        probs = preds[PROBS].to_numpy()
        point = evaluation_metrics(preds["true_grade"].to_numpy(), probs, threshold)
        assert m["kappa"] == pytest.approx(point["kappa"], abs=1e-4)
        for metric in point:
            assert m[f"{metric}_ci_low"] <= m[f"{metric}_ci_high"], metric
            assert 0 <= m[f"{metric}_ci_undefined"] < 200, metric
        assert (m["ci_unit"], m["ci_units"], m["ci_resamples"]) == ("image", len(preds), 200)
        assert {"referable_auroc", "sensitivity_grade_4", "retfound", "ece", "ece_ci_low"} <= set(m)
        # the operating point: one threshold, chosen on val, recomputes from predictions.csv
        assert (m["referable_rule"], m["referable_target"]) == ("sensitivity", 0.9)
        assert m["referable_threshold"] == threshold
        referable, referred = preds["true_grade"] >= 2, preds["p_referable"] >= threshold
        assert (preds["referable"] == referred).all()
        assert m["referable_sensitivity"] == (referable & referred).sum() / referable.sum()
        assert m["referable_specificity"] == (~referable & ~referred).sum() / (~referable).sum()
        assert m["referable_ppv"] == (referable & referred).sum() / referred.sum()
        assert m["referable_npv"] == (~referable & ~referred).sum() / (~referred).sum()
        confusion = pd.read_csv(out / "confusion" / f"{name}.csv")
        assert list(confusion.columns) == ["actual", "predicted"]
        assert confusion["actual"].tolist() == preds["true_grade"].tolist()
        assert confusion["predicted"].tolist() == preds["pred_grade"].tolist()
        Image.open(out / "datasets" / name / "confusion_matrix.png").verify()
        Image.open(out / "datasets" / name / "reliability.png").verify()
    assert metrics["val"]["referable_sensitivity"] >= 0.9  # what the rule promised, on val
    val_preds = pd.read_csv(out / "datasets/val/predictions.csv")
    assert (val_preds["p_referable"] == threshold).any()  # a val score, written exactly
    # metrics.json stays valid JSON (NaN -> null) and keyed by dataset
    write_json_atomic(out / "metrics.json", metrics)
    assert set(json.loads((out / "metrics.json").read_text())) == {"val", "test", "b"}
    # the same seed gives the same intervals
    again = evaluate_datasets(model, datasets, tmp_path / "again", bootstrap_samples=200, seed=3)
    assert again == metrics


def test_threshold_is_chosen_on_val_only(tmp_path, model):
    val = prepared_set(tmp_path / "val", 40, 2)
    test = prepared_set(tmp_path / "test", 30, 0)
    relabelled = prepared_set(tmp_path / "test2", 30, 0, grades=np.arange(30) % 3 + 2)
    other_images = prepared_set(tmp_path / "test3", 50, 7)  # other probabilities too

    def threshold(datasets, rule="sensitivity"):
        m = evaluate_datasets(
            model, datasets, tmp_path / "out", bootstrap_samples=0, referable_rule=rule
        )
        assert len({d["referable_threshold"] for d in m.values()}) == 1  # the same everywhere
        return m["test"]["referable_threshold"]

    chosen = threshold({"val": val, "test": test})
    assert threshold({"test": relabelled, "val": val}) == chosen  # other labels, other order
    assert threshold({"val": val, "test": other_images}) == chosen  # other probabilities
    youden = threshold({"val": val, "test": test}, "youden")
    assert threshold({"val": val, "test": relabelled}, "youden") == youden
    # ... while other val images do move it (so the checks above could fail)
    assert threshold({"val": prepared_set(tmp_path / "val2", 40, 9), "test": test}) != chosen
    # without a val split there is no operating point (and no referable figures at one)
    m = evaluate_datasets(model, {"test": test}, tmp_path / "out", bootstrap_samples=0)["test"]
    assert "referable_threshold" not in m and "referable_sensitivity" not in m
    assert "referable" not in pd.read_csv(tmp_path / "out/datasets/test/predictions.csv")


def test_patients_are_resampled_where_known(tmp_path, model):
    grades = np.repeat(np.arange(20) % 5, 2)  # both eyes of a patient share a grade here
    patients = np.repeat([f"p{i}" for i in range(20)], 2)
    datasets = {
        "val": prepared_set(tmp_path / "val", 30, 2),
        "eyes": prepared_set(tmp_path / "eyes", 40, 1, grades=grades, patients=patients),
    }
    m = evaluate_datasets(model, datasets, tmp_path / "out", bootstrap_samples=100)
    assert (m["eyes"]["ci_unit"], m["eyes"]["ci_units"]) == ("patient", 20)
    assert (m["val"]["ci_unit"], m["val"]["ci_units"]) == ("image", 30)
    preds = pd.read_csv(tmp_path / "out/datasets/eyes/predictions.csv")
    assert preds["patient"].tolist() == patients.tolist()


def save_model(model, folder, checkpoint):
    save_trained_model(model, folder, ModelConfig(checkpoint=str(checkpoint), input_size=32), {})
    return folder


def test_seeds_give_each_seed_and_the_mean_with_retfound_interval(tmp_path, mae_checkpoint):
    seeds_dir = tmp_path / "seeds"
    for s in (7, 11, 3):
        save_model(random_model(mae_checkpoint, s), seeds_dir / str(s), mae_checkpoint)
    (seeds_dir / "notes").mkdir()  # not a model folder: ignored
    seed_models = find_seed_models(seeds_dir)
    assert list(seed_models) == ["3", "7", "11"]
    datasets = {
        "val": prepared_set(tmp_path / "val", 30, 2),
        "test": prepared_set(tmp_path / "t", 25, 0),
    }
    delivered = random_model(mae_checkpoint, 7)  # as train-best delivers: one of the seeds
    out = tmp_path / "eval"
    metrics = evaluate_datasets(
        delivered, datasets, out, bootstrap_samples=50, seed_models=seed_models
    )
    for name in datasets:
        seeds = metrics[name]["seeds"]
        assert seeds["n"] == 3 and {"3", "7", "11", "mean", "sd", "ci95_low", "ci95_high"} <= set(
            seeds
        )
        # each seed's figures recompute from its predictions, at its own threshold chosen on val
        for s in ("3", "7", "11"):
            preds = pd.read_csv(out / "datasets" / name / "seeds" / f"{s}.csv")
            t = seeds[s]["referable_threshold"]
            assert t == metrics["val"]["seeds"][s]["referable_threshold"]
            point = evaluation_metrics(preds["true_grade"].to_numpy(), preds[PROBS].to_numpy(), t)
            assert seeds[s]["kappa"] == pytest.approx(point["kappa"], abs=1e-4)
            referable, referred = preds["true_grade"] >= 2, preds["p_referable"] >= t
            assert (
                seeds[s]["referable_sensitivity"] == (referable & referred).sum() / referable.sum()
            )
        # the delivered model's bootstrap figures sit beside seed 7's (the same model)
        for metric in ("accuracy", "kappa", "auroc", "retfound", "referable_threshold"):
            assert seeds["7"][metric] == pytest.approx(metrics[name][metric], abs=1e-6), metric
        # mean +- 1.96 x SD (ddof 1) / sqrt(3), per metric
        for metric in ("accuracy", "kappa", "auroc", "f1", "retfound", "ece"):
            values = np.array([seeds[s][metric] for s in ("3", "7", "11")])
            half = 1.96 * values.std(ddof=1) / np.sqrt(3)
            assert seeds["mean"][metric] == pytest.approx(values.mean())
            assert seeds["ci95_low"][metric] == pytest.approx(values.mean() - half)
            assert seeds["ci95_high"][metric] == pytest.approx(values.mean() + half)
        assert len({seeds[s]["accuracy"] for s in ("3", "7", "11")}) > 1  # seeds differ
    # flat enough for `dvc metrics diff`: test.seeds.mean.kappa, test.seeds.11.kappa
    write_json_atomic(out / "metrics.json", metrics)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["seeds"]["mean"]["kappa"] == metrics["test"]["seeds"]["mean"]["kappa"]
    # one seed: nothing extra
    only = {"7": seed_models["7"]}
    one = evaluate_datasets(
        delivered, datasets, tmp_path / "one", bootstrap_samples=0, seed_models=only
    )
    assert "seeds" not in one["test"]


def test_no_intervals_when_bootstrap_off(tmp_path, model):
    datasets = {"test": prepared_set(tmp_path / "p/test", 10, 0)}
    m = evaluate_datasets(model, datasets, tmp_path / "eval", bootstrap_samples=0)["test"]
    assert "kappa" in m and not [k for k in m if "ci_" in k]


def test_evaluate_params(tmp_path, mae_checkpoint):
    params = tiny_params(tmp_path, mae_checkpoint)
    assert params.evaluate.bootstrap_samples == 1000
    assert (params.evaluate.referable_rule, params.evaluate.referable_target) == (
        "sensitivity",
        0.9,
    )
    params = tiny_params(tmp_path, mae_checkpoint, evaluate={"bootstrap_samples": 0})
    assert params.evaluate.bootstrap_samples == 0
    with pytest.raises(ConfigError, match=r"evaluate.bootstrap_samples: -5 is not allowed"):
        tiny_params(tmp_path, mae_checkpoint, evaluate={"bootstrap_samples": -5})
    with pytest.raises(ConfigError, match=r"evaluate.bootstrap_samples: expected int"):
        tiny_params(tmp_path, mae_checkpoint, evaluate={"bootstrap_samples": 1.5})
    params = tiny_params(tmp_path, mae_checkpoint, evaluate={"referable_rule": "youden"})
    assert params.evaluate.referable_rule == "youden"
    with pytest.raises(ConfigError, match=r"evaluate.referable_rule: 'argmax' is not allowed"):
        tiny_params(tmp_path, mae_checkpoint, evaluate={"referable_rule": "argmax"})
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=rf"evaluate.referable_target: {bad} is not allowed"):
            tiny_params(tmp_path, mae_checkpoint, evaluate={"referable_target": bad})
    assert (
        tiny_params(tmp_path, mae_checkpoint, hpo={"metric": "retfound"}).hpo.metric == "retfound"
    )
    dataset = {"format": "aptos", "csv": "x.csv", "images": "x"}
    with pytest.raises(ConfigError, match=r"evaluate.datasets: \['val'\] is not allowed"):
        tiny_params(tmp_path, mae_checkpoint, evaluate={"datasets": [{"name": "val", **dataset}]})


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


def test_val_without_referable_images_is_one_clear_error(tmp_path, model):
    datasets = {
        "val": prepared_set(tmp_path / "val", 10, 2, grades=np.arange(10) % 2),
        "test": prepared_set(tmp_path / "test", 10, 0),
    }
    with pytest.raises(DatasetError, match=r"val split has no referable \(grade >= 2\) image"):
        evaluate_datasets(model, datasets, tmp_path / "eval", bootstrap_samples=0)
    assert not (tmp_path / "eval").exists()

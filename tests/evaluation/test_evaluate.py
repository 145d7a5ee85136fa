"""evaluate-cross-dataset: per-dataset metrics with intervals, the operating point, seeds, files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from conftest import tiny_params
from retfound_hpo.core.errors import ConfigError, DatasetError
from retfound_hpo.core.files import write_json_atomic
from retfound_hpo.core.params import EvaluateConfig, ModelConfig
from retfound_hpo.evaluation.dataset_metrics import IntervalSettings, dataset_metrics
from retfound_hpo.evaluation.evaluate import evaluate_datasets
from retfound_hpo.evaluation.predictions import read_predictions, table_probs, table_units
from retfound_hpo.evaluation.seed_summary import find_seed_models
from retfound_hpo.evaluation.summary import summary_markdown
from retfound_hpo.metrics.calibration import expected_calibration_error
from retfound_hpo.metrics.classification import evaluation_metrics
from retfound_hpo.metrics.recalibration import apply_temperature
from retfound_hpo.metrics.threshold import choose_threshold
from retfound_hpo.model.adapters import build_model
from retfound_hpo.model.saved import save_trained_model

PROBS = [f"prob_{c}" for c in range(5)]


def prepared_set(folder, n: int, seed: int, size: int = 32, grades=None, patients=None, **groups):
    """A prepared folder as prepare-split writes it: images.npy + index.csv (extra `groups`
    columns: exam, duplicate_group, unit)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))
    ids = [f"img{i}" for i in range(n)]
    grades = np.arange(n) % 5 if grades is None else grades
    patients = ids if patients is None else patients
    index = pd.DataFrame({"id": ids, "grade": grades, "patient": patients, "path": ids})
    index.assign(**groups).to_csv(folder / "index.csv", index=False)
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


PREDICTION_COLUMNS = [
    "id", "true_grade", "pred_grade", *PROBS, "patient", "exam", "duplicate_group", "unit",
    "p_referable", "referable",
]  # fmt: skip
PROPORTIONS = ("referable_sensitivity", "referable_specificity", "referable_ppv", "referable_npv")
BOOTSTRAPPED = ("kappa", "auroc", "f1", "retfound", "ece", "referable_auroc", "referable_ece")


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, recursively: exactly, not approximately."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def test_metrics_intervals_and_files(tmp_path, model):
    datasets = {
        "val": prepared_set(tmp_path / "p/val", 60, 2),
        "test": prepared_set(tmp_path / "p/test", 30, 0),
        "b": prepared_set(tmp_path / "p/b", 20, 1),
    }
    out = tmp_path / "eval"
    metrics = evaluate_datasets(model, datasets, out, EvaluateConfig(bootstrap_samples=200), 3)
    assert list(metrics) == ["val", "test", "b"]
    threshold = metrics["val"]["referable_threshold"]
    for name, m in metrics.items():
        preds = read_predictions(out / "datasets" / name / "predictions.csv")
        assert list(preds.columns) == PREDICTION_COLUMNS
        assert len(preds) == m["n_images"]
        assert (m["ci_unit"], m["ci_units"], m["ci_resamples"]) == ("image", len(preds), 200)
        assert "treated as independent" in m["ci_unit_note"]
        assert m["ci_proportions"].startswith("wilson")
        for metric in BOOTSTRAPPED:
            assert m[f"{metric}_ci_low"] < m[f"{metric}_ci_high"], metric
            assert 0 <= m[f"{metric}_ci_undefined"] < 200, metric
        assert np.isfinite(m["ece_bootstrap_bias"]) and np.isfinite(
            m["referable_ece_bootstrap_bias"]
        )
        for metric in ("accuracy", *PROPORTIONS, "sensitivity_grade_2"):
            low, high = m[f"{metric}_ci_low"], m[f"{metric}_ci_high"]
            if np.isnan(m[metric]):  # NPV with every image referred: undefined, not [1, 1]
                assert np.isnan(low) and np.isnan(high)
                continue
            assert low <= m[metric] <= high and high > low, metric  # never zero width
        # the operating point: one threshold, chosen on val, recomputes from predictions.csv
        assert (m["referable_rule"], m["referable_target"]) == ("sensitivity_lcb", 0.9)
        assert m["referable_threshold"] == threshold and m["referable_confidence"] == 0.95
        assert m["referable_target_met_on"] in ("val", "none (every val image referred)")
        referable, referred = preds["true_grade"] >= 2, preds["p_referable"] >= threshold
        assert (preds["referable"] == referred).all()
        assert m["referable_sensitivity"] == (referable & referred).sum() / referable.sum()
        assert m["referable_specificity"] == (~referable & ~referred).sum() / (~referable).sum()
        # one image per unit: the plain Wilson interval, as statsmodels gives it
        tp, n_pos = (referable & referred).sum(), referable.sum()
        wilson = proportion_confint(tp, n_pos, 0.05, "wilson")
        assert m["referable_sensitivity_ci_low"] == pytest.approx(wilson[0], abs=1e-12) or tp == 0
        assert m["referable_sensitivity_ci_high"] == pytest.approx(
            1.0 if tp == n_pos else wilson[1], abs=1e-12
        )
        assert m["referable_auroc"] == pytest.approx(roc_auc_score(referable, preds["p_referable"]))
        assert m["prevalence"] == 0.078
        assert m["referable_ppv_at_prevalence_ci_low"] <= m["referable_ppv_at_prevalence"]
        confusion = pd.read_csv(out / "confusion" / f"{name}.csv")
        assert list(confusion.columns) == ["actual", "predicted"]
        assert confusion["actual"].tolist() == preds["true_grade"].tolist()
        assert confusion["predicted"].tolist() == preds["pred_grade"].tolist()
        for png in ("confusion_matrix", "reliability"):
            Image.open(out / "datasets" / name / f"{png}.png").verify()
    val_preds = pd.read_csv(out / "datasets/val/predictions.csv", dtype={"p_referable": "float32"})
    assert (val_preds["p_referable"] == np.float32(threshold)).any()  # a val score, exactly
    # metrics.json stays valid JSON (NaN -> null) and keyed by dataset
    write_json_atomic(out / "metrics.json", metrics)
    assert set(json.loads((out / "metrics.json").read_text())) == {"val", "test", "b"}
    # the same seed gives the same intervals
    again = evaluate_datasets(model, datasets, tmp_path / "again", bootstrap_samples=200, seed=3)
    assert same(again, metrics)


def test_every_figure_recomputes_exactly_from_predictions_csv(tmp_path, model):
    """metrics.json from nothing but the predictions CSVs: the threshold from val's, every
    point estimate and interval from each dataset's, bit for bit (full float32 probabilities:
    no rounding that moves an image across the threshold)."""
    datasets = {
        "val": prepared_set(tmp_path / "val", 80, 2, grades=np.arange(80) % 5 // 2 * 2),
        "test": prepared_set(tmp_path / "test", 40, 0, patients=[f"p{i // 2}" for i in range(40)]),
    }
    config = EvaluateConfig(bootstrap_samples=50, referable_rule="sensitivity", prevalence=0.1)
    metrics = json.loads(json.dumps(evaluate_datasets(model, datasets, tmp_path, config, seed=5)))
    tables = {n: read_predictions(tmp_path / f"datasets/{n}/predictions.csv") for n in datasets}
    val = tables["val"]
    choice = choose_threshold(
        val["true_grade"].to_numpy(), table_probs(val), "sensitivity", 0.9, units=table_units(val)
    )
    assert choice.threshold == metrics["val"]["referable_threshold"]
    settings = IntervalSettings(50, 5, "wilson", 0.1)
    for name, table in tables.items():
        again = json.loads(json.dumps(dataset_metrics(table, choice, settings)))
        assert same(again, metrics[name]), name
        # and directly: the decisions, the probabilities and the point figures
        probs = table_probs(table)
        assert probs.dtype == np.float32
        point = evaluation_metrics(table["true_grade"].to_numpy(), probs, choice.threshold)
        assert all(same(point[k], metrics[name][k]) for k in point)
    assert metrics["test"]["ci_unit"] == "patient" and metrics["test"]["ci_units"] == 20


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


def test_seeds_give_each_seed_and_the_mean_with_a_t_interval(tmp_path, mae_checkpoint):
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
    assert "95 % t interval over 3 seeds" in summary_markdown(metrics)
    for name in datasets:
        seeds = metrics[name]["seeds"]
        assert seeds["n"] == 3 and {"3", "7", "11", "mean", "sd", "ci95_low", "ci95_high"} <= set(
            seeds
        )
        assert seeds["interval"].startswith("95 % t interval over 3 seeds")
        # each seed's figures recompute from its predictions, at its own threshold chosen on val
        for s in ("3", "7", "11"):
            preds = read_predictions(out / "datasets" / name / "seeds" / f"{s}.csv")
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
        # mean +- t(0.975, 2) x SD (ddof 1) / sqrt(3), per metric, clipped to its range
        for metric in ("accuracy", "kappa", "auroc", "f1", "retfound", "ece"):
            values = np.array([seeds[s][metric] for s in ("3", "7", "11")])
            half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
            top = 100 if metric == "accuracy" else 1
            assert seeds["mean"][metric] == pytest.approx(values.mean())
            assert seeds["ci95_low"][metric] == pytest.approx(max(values.mean() - half, -top))
            assert seeds["ci95_high"][metric] == pytest.approx(min(values.mean() + half, top))
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
    assert "kappa" in m and not [k for k in m if k.startswith("kappa_ci") or "undefined" in k]
    assert "ci_bootstrap" not in m and m["accuracy_ci_low"] < m["accuracy_ci_high"]  # proportions


def test_evaluate_params(tmp_path, mae_checkpoint):
    params = tiny_params(tmp_path, mae_checkpoint)
    ev = params.evaluate
    assert ev.bootstrap_samples == 1000 and ev.proportion_interval == "wilson"
    rule = (ev.referable_rule, ev.referable_target, ev.referable_confidence)
    assert rule == ("sensitivity_lcb", 0.9, 0.95)
    assert (ev.prevalence, ev.seed_interval, ev.temperature_scaling) == (0.078, "t", False)
    for key, bad, message in [
        ("referable_rule", "argmax", "choose one of ['sensitivity_lcb', 'sensitivity', 'youden']"),
        ("referable_confidence", 1.0, "must be in [0.5, 1)"),
        ("prevalence", 0.0, "must be in (0, 1)"),
        ("seed_interval", "z", "choose one of ['t', 'retfound_1.96']"),
        ("proportion_interval", "wald", "choose one of ['wilson', 'clopper-pearson']"),
        ("temperature_scaling", "yes", "expected true or false"),
    ]:
        with pytest.raises(ConfigError) as info:
            tiny_params(tmp_path, mae_checkpoint, evaluate={key: bad})
        assert str(info.value).startswith(f"evaluate.{key}: ") and message in str(info.value)
    assert (
        tiny_params(tmp_path, mae_checkpoint, evaluate={"prevalence": None}).evaluate.prevalence
        is None
    )
    with pytest.raises(ConfigError, match=r"evaluate.datasets\[0\].exams: '' is not allowed"):
        entry = {"name": "b", "format": "messidor", "csv": "x", "images": "y", "exams": ""}
        tiny_params(tmp_path, mae_checkpoint, evaluate={"datasets": [entry]})
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
    with pytest.raises(ConfigError, match=r"evaluate.datasets\[0\].name: 'val' is not allowed"):
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


def test_units_exams_and_duplicates(tmp_path, model):
    """A duplicated photograph lowers the unit count and widens the intervals; a Messidor-2
    set with exams is resampled by exam and reports per-exam referral beside per-image."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    grades = np.arange(40) % 5
    copies = np.r_[np.arange(40), np.arange(10)]  # images 0-9 present twice

    def dataset(name, order, **groups):
        folder = prepared_set(tmp_path / name, len(order), 0, grades=grades[order], **groups)
        np.save(folder / "images.npy", images[order])
        return folder

    marked = np.array([f"dup{i}" if i < 10 else "" for i in copies])
    datasets = {
        "val": prepared_set(tmp_path / "val", 40, 2),
        "unmarked": dataset("unmarked", copies),
        "copies": dataset("copies", copies, duplicate_group=marked),
        "exams": dataset("exams", np.arange(40), exam=[f"e{i // 2}" for i in range(40)]),
    }
    m = evaluate_datasets(model, datasets, tmp_path / "eval", bootstrap_samples=100, seed=1)
    assert (m["unmarked"]["ci_unit"], m["unmarked"]["ci_units"]) == ("image", 50)
    assert (m["copies"]["ci_unit"], m["copies"]["ci_units"]) == ("duplicate group", 40)
    width = lambda d, k: d[f"{k}_ci_high"] - d[f"{k}_ci_low"]  # noqa: E731
    for key in ("accuracy", "kappa", "referable_auroc"):
        assert width(m["copies"], key) > width(m["unmarked"], key), key
    assert m["copies"]["accuracy"] == m["unmarked"]["accuracy"]  # the same images, unit aside
    # exams: units of two eyes, and referral per exam beside per image
    exams = m["exams"]
    assert (exams["ci_unit"], exams["ci_units"]) == ("exam", 20)
    assert "per_exam" not in m["unmarked"] and "per_patient" not in m["unmarked"]
    per_exam = exams["per_exam"]
    preds = read_predictions(tmp_path / "eval/datasets/exams/predictions.csv")
    by_exam = preds.groupby("exam").agg(grade=("true_grade", "max"), score=("p_referable", "max"))
    referable = by_exam["grade"] >= 2
    referred = by_exam["score"] >= exams["referable_threshold"]
    assert per_exam["n"] == 20 and per_exam["n_images"] == 40
    assert per_exam["referable_sensitivity"] == (referable & referred).sum() / referable.sum()
    assert per_exam["referable_auroc"] == pytest.approx(roc_auc_score(referable, by_exam["score"]))
    assert per_exam["referable_sensitivity_ci_low"] < per_exam["referable_sensitivity_ci_high"]
    summary = summary_markdown(m)
    assert "## Referral per exam (or patient)" in summary and "exams (20 exams)" in summary
    assert "| copies | 50 | duplicate group | 40 |" in summary
    assert "images are treated as independent" in summary  # `unmarked`


def test_temperature_scaling_on_val_with_before_and_after(tmp_path, model):
    datasets = {
        "val": prepared_set(tmp_path / "val", 40, 2),
        "test": prepared_set(tmp_path / "t", 20, 0),
    }
    out = tmp_path / "eval"
    m = evaluate_datasets(model, datasets, out, bootstrap_samples=0, temperature_scaling=True)
    t = m["val"]["temperature"]
    assert t == m["test"]["temperature"] and t != 1.0
    for name in datasets:
        preds = read_predictions(out / "datasets" / name / "predictions.csv")
        y, probs, raw = preds["true_grade"], table_probs(preds), table_probs(preds, "raw_prob_")
        assert (probs.argmax(axis=1) == raw.argmax(axis=1)).all()  # argmax unchanged
        assert np.allclose(probs, apply_temperature(raw, t), atol=1e-6)  # scaled by T
        assert m[name]["ece"] == expected_calibration_error(y, probs)
        assert m[name]["ece_unscaled"] == expected_calibration_error(y, raw)
        for png in ("reliability", "reliability_unscaled"):
            Image.open(out / "datasets" / name / f"{png}.png").verify()
    assert m["val"]["ece"] < m["val"]["ece_unscaled"]  # fitted on val: better calibrated there

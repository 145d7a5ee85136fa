"""retfound-compare: paired bootstrap of two variants' predictions, against a brute-force loop."""

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from dvc.api import DVCFileSystem
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from conftest import REPO, sh
from retfound_hpo.core.errors import DatasetError
from retfound_hpo.evaluation.compare import main
from retfound_hpo.evaluation.paired import (
    Paired,
    paired_bootstrap,
    paired_comparison,
    paired_predictions,
)
from retfound_hpo.metrics import bootstrap
from retfound_hpo.metrics.delong import delong_test, holm

METRICS = (
    "accuracy",
    "kappa",
    "auroc",
    "f1",
    "referable_auroc",
    "referable_sensitivity",
    "referable_specificity",
)


def graded(n: int = 150, seed: int = 0):
    """True grades (every grade often enough that no resample lacks one) and two variants'
    probabilities: B a little sharper than A."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 5
    logits = rng.normal(size=(n, 5))
    logits_a = logits + 1.0 * np.eye(5)[y]
    logits_b = logits + 2.0 * np.eye(5)[y]
    softmax = lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # noqa: E731
    return y, softmax(logits_a), softmax(logits_b)


def referred(probs, threshold):
    return probs[:, 2:].sum(axis=1) >= threshold


def pair(y, pa, pb, patients=None) -> Paired:
    """A and B with decisions at their own thresholds (0.5 and 0.3)."""
    ids = pd.Series([f"img{i}" for i in range(len(y))])
    return Paired(ids, y, (pa, pb), (referred(pa, 0.5), referred(pb, 0.3)), patients)


def sklearn_metrics(y, probs, decisions) -> dict[str, float]:
    pred = probs.argmax(axis=1)
    labels = list(range(5))
    return {
        "accuracy": 100 * accuracy_score(y, pred),
        "kappa": cohen_kappa_score(y, pred, weights="quadratic", labels=labels),
        "auroc": np.mean([roc_auc_score(y == c, probs[:, c]) for c in labels]),
        "f1": f1_score(y, pred, average="macro", labels=labels, zero_division=0),
        "referable_auroc": roc_auc_score(y >= 2, probs[:, 2:].sum(axis=1)),
        "referable_sensitivity": recall_score(y >= 2, decisions),
        "referable_specificity": recall_score(y < 2, ~decisions),
    }


@pytest.mark.parametrize("unit", ["image", "patient"])
def test_paired_bootstrap_matches_a_brute_force_loop(unit, monkeypatch):
    monkeypatch.setattr(bootstrap, "RESAMPLE_CHUNK", 16)  # several chunks, the last one short
    y, pa, pb = graded(100)
    n, n_resamples, seed = len(y), 50, 7
    # patients: both eyes of patient k are images 2k and 2k+1
    patients = np.array([f"p{i // 2}" for i in range(n)]) if unit == "patient" else None
    paired = pair(y, pa, pb, patients)
    ra, rb = paired.referred
    groups = patients if patients is not None else np.arange(n)
    members = pd.Series(np.arange(n)).groupby(pd.factorize(groups)[0]).apply(list)

    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(members), size=(n_resamples, len(members)))
    diffs = {m: [] for m in METRICS}
    for row in drawn:
        i = np.concatenate([members[g] for g in row])
        on_a, on_b = sklearn_metrics(y[i], pa[i], ra[i]), sklearn_metrics(y[i], pb[i], rb[i])
        for m in METRICS:
            diffs[m].append(on_b[m] - on_a[m])

    result = paired_bootstrap(paired, METRICS, n_resamples, seed)
    full_a, full_b = sklearn_metrics(y, pa, ra), sklearn_metrics(y, pb, rb)
    for m in METRICS:
        d = np.array(diffs[m])
        r = result[m]
        assert r["a"] == pytest.approx(full_a[m]) and r["b"] == pytest.approx(full_b[m])
        assert r["diff"] == pytest.approx(full_b[m] - full_a[m])
        assert r["n_resamples"] == n_resamples
        assert [r["ci_low"], r["ci_high"]] == pytest.approx(np.percentile(d, [2.5, 97.5]))
        smaller = min((d <= 1e-12).sum(), (d >= -1e-12).sum())
        assert r["p_value"] == pytest.approx(min(1, 2 * (smaller + 1) / (n_resamples + 1)))
    # B is built to be better: the test should see it, with a small p.
    assert result["kappa"]["ci_low"] > 0 and result["kappa"]["p_value"] < 0.05


def test_delong_beside_the_bootstrap_and_holm_over_the_metrics():
    y, pa, pb = graded(120)
    units = np.array([f"p{i // 2}" for i in range(len(y))])
    result = paired_comparison(pair(y, pa, pb, units), METRICS, 100, 0)
    delong = result["referable_auroc"]["delong"]
    ref = delong_test(y >= 2, pa[:, 2:].sum(axis=1), pb[:, 2:].sum(axis=1), units=units)
    assert delong["method"] == "obuchowski" and delong["n_units"] == 60
    assert (delong["diff"], delong["p_value"], delong["ci_low"]) == (
        ref.diff,
        ref.p_value,
        ref.ci_low,
    )
    assert delong["diff"] == pytest.approx(result["referable_auroc"]["diff"])  # the same AUROCs
    # Holm over the family: DeLong's p for the referable AUROC, the bootstrap's for the rest
    family = [
        delong["p_value"] if m == "referable_auroc" else result[m]["p_value"] for m in METRICS
    ]
    _, adjusted = holm(np.array(family))
    assert [result[m]["p_holm"] for m in METRICS] == pytest.approx(adjusted)
    assert all(
        result[m]["p_holm"] >= result[m]["p_value"] for m in METRICS if m != "referable_auroc"
    )
    # a single metric is a family of one: no adjustment
    one = paired_comparison(pair(y, pa, pb, units), ("kappa",), 100, 0)
    assert one["kappa"]["p_holm"] == one["kappa"]["p_value"]


def test_patient_resampling_is_not_image_resampling():
    y, pa, pb = graded()
    patients = np.array([f"p{i // 2}" for i in range(len(y))])
    by_image = paired_bootstrap(pair(y, pa, pb), ("kappa",), 200, 0)
    by_patient = paired_bootstrap(pair(y, pa, pb, patients), ("kappa",), 200, 0)
    assert by_image["kappa"]["ci_low"] != by_patient["kappa"]["ci_low"]


def test_a_variant_compared_with_itself_differs_by_zero():
    y, pa, _ = graded()
    same = Paired(pd.Series(range(len(y))), y, (pa, pa.copy()), (referred(pa, 0.5),) * 2)
    result = paired_bootstrap(same, None, 200, 0)
    assert tuple(result) == METRICS  # the default metrics
    for r in result.values():
        assert r["diff"] == 0 and r["ci_low"] <= 0 <= r["ci_high"]
        assert r["ci_low"] == r["ci_high"] == 0  # paired: every resample differs by 0
        assert r["p_value"] == 1.0


def predictions(y, probs, threshold=0.5, patients=None) -> pd.DataFrame:
    """predictions.csv as evaluate-cross-dataset writes it (patient and referable optional)."""
    table = pd.DataFrame(
        {"id": [f"img{i}" for i in range(len(y))], "true_grade": y, "pred_grade": probs.argmax(1)}
    )
    for c in range(probs.shape[1]):
        table[f"prob_{c}"] = probs[:, c]
    if patients is not None:
        table["patient"] = patients
    table["p_referable"] = probs[:, 2:].sum(axis=1)  # extra columns are read by name, or not
    if threshold is not None:
        table["referable"] = referred(probs, threshold).astype(int)
    return table


def test_images_are_matched_by_id_not_by_row():
    y, pa, pb = graded(20)
    patients = [f"p{i // 2}" for i in range(20)]
    a, b = predictions(y, pa, patients=patients), predictions(y, pb, threshold=0.3)
    shuffled = b.sample(frac=1, random_state=0)
    paired = paired_predictions(a, shuffled, "val")
    assert list(paired.ids) == list(a["id"])
    np.testing.assert_array_equal(paired.y_true, y)
    np.testing.assert_allclose(paired.probs[1], pb)
    np.testing.assert_array_equal(paired.referred[1], referred(pb, 0.3))
    assert list(paired.units) == patients  # the patients, where no unit is recorded

    # Runs evaluated before the operating point existed: no decisions, so no such metrics.
    old = paired_predictions(a, b.drop(columns="referable"), "val")
    assert old.referred is None
    assert "referable_sensitivity" not in paired_bootstrap(old, None, 10)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.iloc[1:], "val: A and B graded different images (1 only in A, 0 only in B"),
        (lambda b: b.assign(true_grade=4 - b["true_grade"]), "different true grades"),
        (lambda b: pd.concat([b, b.iloc[:1]]), "B's predictions list image 'img0' twice"),
    ],
)
def test_different_images_are_refused(edit, message):
    y, pa, pb = graded(20)
    with pytest.raises(DatasetError, match=re.escape(message)):
        paired_predictions(predictions(y, pa), edit(predictions(y, pb)), "val")


def write_variant(root, datasets: dict[str, tuple], patients=None) -> None:
    """A folder holding a results/eval tree with these datasets' predictions."""
    for name, (y, probs, threshold) in datasets.items():
        folder = root / "results/eval/datasets" / name
        folder.mkdir(parents=True)
        table = predictions(y, probs, threshold, patients if len(y) == 100 else None)
        table.to_csv(folder / "predictions.csv", index=False)


def test_command_compares_folders_dataset_by_dataset(tmp_path, capsys):
    y, pa, pb = graded(100)
    yt, ta, tb = graded(60, seed=1)
    eyes = [f"p{i // 2}" for i in range(100)]
    a = {"val": (y, pa, 0.5), "test": (yt, ta, 0.5), "mine": (yt, ta, 0.5)}
    write_variant(tmp_path / "A", a, patients=eyes)
    b = {"val": (y, pb, 0.3), "test": (yt, tb, 0.3), "other": (yt, tb, 0.3)}
    write_variant(tmp_path / "B", b)

    main([str(tmp_path / "A"), str(tmp_path / "B"), "--json", "--resamples", "100"])
    report = json.loads(capsys.readouterr().out)
    assert list(report["datasets"]) == ["test", "val"]  # the ones both have
    val = report["datasets"]["val"]
    assert (val["unit"], val["n_units"], val["n_images"]) == ("patient", 50, 100)
    assert list(val["metrics"]) == list(METRICS)
    expected = paired_comparison(pair(y, pa, pb, np.array(eyes)), METRICS, 100, 0)
    assert val["metrics"]["referable_auroc"]["delong"]["method"] == "obuchowski"
    for metric, r in val["metrics"].items():
        delong, expected_delong = r.pop("delong", {}), expected[metric].pop("delong", {})
        assert r == pytest.approx(expected[metric])
        assert delong.pop("method", None) == expected_delong.pop("method", None)
        assert delong == pytest.approx(expected_delong)
    assert report["datasets"]["test"]["unit"] == "image"
    main([str(tmp_path / "A"), str(tmp_path / "B"), "--json", "-d", "val", "--unit", "image"])
    assert json.loads(capsys.readouterr().out)["datasets"]["val"]["unit"] == "image"

    main([str(tmp_path / "A"), str(tmp_path / "B"), "--split", "val", "-m", "kappa"])
    head, _, *rows = capsys.readouterr().out.strip().splitlines()
    assert "paired bootstrap" in head and "of val: 50 patients" in head
    assert rows[0].split() == [
        "dataset", "metric", "A", "B", "B", "-", "A", "95%", "CI", "p", "p", "Holm"
    ]  # fmt: skip
    (row,) = rows[1:]  # one dataset, one metric
    k = expected["kappa"]
    cells = ["val", "kappa", f"{k['a']:.3f}", f"{k['b']:.3f}", f"{k['diff']:+.3f}"]
    assert row.split()[:5] == cells


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "other"], "error: other: A ("),
        (["--metric", "nope"], "error: --metric nope: not a metric here; choose from ["),
    ],
)
def test_command_errors_are_one_line(tmp_path, capsys, argv, message):
    y, pa, pb = graded(40)
    write_variant(tmp_path / "A", {"val": (y, pa, 0.5)})
    write_variant(tmp_path / "B", {"val": (y, pb, 0.5), "other": (y, pb, 0.5)})
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "A"), str(tmp_path / "B"), *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith(message) and "\n" not in err, err


def test_unknown_variant_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["no-such-experiment", str(tmp_path), "--repo", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'no-such-experiment': neither a folder nor a DVC experiment")
    assert "\n" not in err


@pytest.mark.slow
@pytest.mark.timeout(600)  # may be the first to build the shared demo pipeline
def test_command_compares_two_dvc_variants(demo_pipeline):
    """On the shared demo pipeline (tiny): the last commit vs an experiment, and a variant vs
    itself."""
    repo = demo_pipeline.repo
    demo_pipeline.experiments()  # HEAD: the resumed study; `long`: train-best for 3 epochs

    report = json.loads(sh("retfound-compare HEAD long --json --resamples 200", repo))
    assert {"test", "domain_b"} <= set(report["datasets"])
    files = {
        rev: json.loads(DVCFileSystem(str(repo), rev=rev).read_text("results/eval/metrics.json"))
        for rev in ("HEAD", "long")
    }
    changed = 0
    for name, ds in report["datasets"].items():
        for metric, r in ds["metrics"].items():
            if name not in files["HEAD"] or metric not in files["HEAD"][name]:
                continue  # e.g. predictions of a split that metrics.json does not report
            a, b = files["HEAD"][name][metric], files["long"][name][metric]
            assert (r["a"], r["b"]) == pytest.approx((a, b), abs=1e-4), (name, metric)
            assert r["diff"] == pytest.approx(b - a, abs=1e-4), (name, metric)
            assert r["ci_low"] <= r["diff"] <= r["ci_high"]
            changed += r["diff"] != 0
    assert changed > 0  # the two variants differ somewhere

    same = json.loads(sh("retfound-compare long long --json --resamples 200", repo))
    for ds in same["datasets"].values():
        for r in ds["metrics"].values():
            assert r["diff"] == 0 and r["ci_low"] <= 0 <= r["ci_high"] and r["p_value"] == 1


def test_a_revision_whose_predictions_are_not_in_this_clone_is_one_line(tmp_path, capsys):
    """A commit made before the predictions were kept in git, cloned without DVC's cache: one
    line naming the revision and what is missing, not DVC's traceback."""
    from dvc.repo import Repo

    root = tmp_path / "repo"
    root.mkdir()
    sh("git init -q", root)
    repo = Repo.init(str(root))
    y, pa, pb = graded(20)
    write_variant(root, {"val": (y, pa, 0.5)})
    repo.add(str(root / "results/eval/datasets"))  # a DVC-cached output, as before
    sh("git add -A && git commit -qm old", root)
    shutil.rmtree(root / ".dvc" / "cache")  # a fresh clone: no cache, no remote
    shutil.rmtree(root / "results/eval/datasets")
    write_variant(tmp_path / "B", {"val": (y, pb, 0.5)})
    with pytest.raises(SystemExit) as exit_info:
        main(["HEAD", str(tmp_path / "B"), "--repo", str(root)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err, err
    assert err.startswith(
        "error: HEAD: results/eval/datasets is not in this clone: that revision keeps its "
        "predictions in DVC's cache"
    )


def test_predictions_are_kept_in_git():
    """dvc.yaml keeps each dataset's predictions out of DVC's cache (issue: a fresh clone could
    not compare HEAD with an experiment)."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate-cross-dataset"]
    outs = {next(iter(o)): o[next(iter(o))] for o in stage["outs"] if isinstance(o, dict)}
    assert outs["${evaluate.output_dir}/datasets"]["cache"] is False
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "results/eval/datasets/val/predictions.csv"], cwd=REPO
    )
    assert ignored.returncode == 1  # not ignored: `git add` takes it

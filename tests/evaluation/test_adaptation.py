"""retfound-adaptation: the comparison table from three arms' pipeline outputs (here folders laid
out as a pipeline run leaves them; the real command reads DVC experiments the same way)."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from retfound_hpo.evaluation.adaptation import main
from retfound_hpo.evaluation.evaluate import predictions_table

COST = {  # trainable parameters, seconds per epoch, bytes on disk
    "lora": (13637, 9.5, 52_000),
    "full": (1_935_749, 12.0, 7_800_000),
    "linear_probe": (965, 3.1, 4_000),
}


def probs_for(grades: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Class probabilities that put `skill` of their mass on the true grade, the rest at random."""
    rng = np.random.default_rng(seed)
    noise = rng.dirichlet(np.ones(5), size=len(grades))
    return (1 - skill) * noise + skill * np.eye(5)[grades]


def arm_folder(root, mode: str, skill: float):
    """What one arm's pipeline leaves: params.yaml, trials.csv, train and eval metrics, and each
    dataset's predictions.csv."""
    root.mkdir()
    (root / "params.yaml").write_text(
        yaml.safe_dump({"model": {"adaptation": mode}, "hpo": {"study_name": "s"}})
    )
    study = root / "results/optuna/s"
    study.mkdir(parents=True)
    pd.DataFrame(
        {"state": ["COMPLETE", "PRUNED", "COMPLETE"], "duration_seconds": [60.0, 30.0, 90.0]}
    ).to_csv(study / "trials.csv", index=False)
    params, seconds, size = COST[mode]
    train = {"trainable_params": params, "seconds_per_epoch": seconds, "peak_memory_mb": 900.0,
             "delivery_bytes": size, "best_epoch": 4, "epochs_run": 9}  # fmt: skip
    (root / "results/train").mkdir(parents=True)
    (root / "results/train/metrics.json").write_text(json.dumps(train))
    metrics = {}
    for i, name in enumerate(("val", "test", "domain_b")):
        grades = np.arange(120) % 5
        index = pd.DataFrame({"id": [f"{name}{j}" for j in range(120)], "grade": grades})
        index["patient"] = index["id"]
        table = predictions_table(index, probs_for(grades, skill, seed=i), threshold=0.5)
        folder = root / "results/eval/datasets" / name
        folder.mkdir(parents=True)
        table.to_csv(folder / "predictions.csv", index=False)
        metrics[name] = {"kappa": skill, "kappa_ci_low": skill - 0.1, "kappa_ci_high": skill + 0.1,
                         "referable_auroc": 0.9, "referable_auroc_ci_low": 0.85,
                         "referable_auroc_ci_high": 0.95}  # fmt: skip
    (root / "results/eval/metrics.json").write_text(json.dumps(metrics))
    return root


def test_the_table_has_every_column_and_says_what_is_resolved(tmp_path, capsys):
    # Full fine-tuning much better than LoRA (same noise, more skill); the probe the same.
    arms = {
        "lora": arm_folder(tmp_path / "lora", "lora", 0.2),
        "full": arm_folder(tmp_path / "full", "full", 0.6),
        "linear_probe": arm_folder(tmp_path / "lp", "linear_probe", 0.2),
    }
    out = tmp_path / "results/adaptation"
    argv = ["table", "--out", str(out), "--resamples", "200"]
    for mode, folder in arms.items():
        argv += ["--arm", f"{mode}={folder}"]
    main(argv)
    report = json.loads((out / "comparison.json").read_text())
    full = report["arms"]["full"]
    assert full["cost"] == {"trainable_params": 1_935_749, "seconds_per_epoch": 12.0,
                            "peak_memory_mb": 900.0, "delivery_bytes": 7_800_000}  # fmt: skip
    assert full["search"] == {"trials": 3, "complete": 2, "pruned": 1, "minutes": 3.0}
    assert set(full["quality"]) == {"val", "test", "domain_b"}
    assert full["quality"]["test"]["kappa_ci_low"] == pytest.approx(0.5)
    vs = report["vs_lora"]
    assert set(vs) == {"full", "linear_probe"}
    assert set(vs["full"]) == {"val", "test", "domain_b"}
    assert set(vs["full"]["test"]["metrics"]) == {"kappa", "referable_auroc"}
    assert vs["full"]["test"]["metrics"]["kappa"]["ci_low"] > 0  # resolved
    assert vs["linear_probe"]["test"]["metrics"]["kappa"]["diff"] == 0  # the same predictions

    md = (out / "comparison.md").read_text()
    for column in ("trainable parameters", "peak memory (MB)", "seconds per epoch",
                   "delivered model on disk", "val QWK", "test referable AUROC",
                   "domain_b QWK", "difference [95 % CI]"):  # fmt: skip
        assert column in md, column
    assert "| full fine-tuning | 1,935,749 | 100.00 % | 900 | 12.0 | 7.44 MB |" in md
    assert "| linear probing | 965 | 0.05 % |" in md
    resolved = next(line for line in md.splitlines() if line.startswith("- Resolved:"))
    unresolved = next(line for line in md.splitlines() if line.startswith("- Not resolved"))
    assert "full fine-tuning vs LoRA, test QWK" in resolved
    assert "linear probing vs LoRA, test QWK (+0.000)" in unresolved
    assert "comparison.md" in capsys.readouterr().out


def test_an_arm_of_another_adaptation_is_refused(tmp_path, capsys):
    lora = arm_folder(tmp_path / "lora", "lora", 0.2)
    with pytest.raises(SystemExit) as exit_info:
        main(["table", "--modes", "lora", "full", "--arm", f"lora={lora}", "--arm", f"full={lora}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: {lora}: model.adaptation is lora, not full")

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_script
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params_yaml import load_params

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.hpo.study_dir == Path("results/optuna/retfound_lora_search")
    assert set(params.hpo.search_space) == {
        "lora_r",
        "lora_alpha",
        "learning_rate",
        "batch_size",
        "dropout",
    }
    assert params.evaluate.datasets[0].format == "messidor"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("hpo", "n_trials"), 0, "hpo.n_trials: 0 is not allowed"),
        (("hpo", "n_trials"), "many", "hpo.n_trials: expected int"),
        (("hpo", "nonsense"), 1, "hpo.nonsense: unknown key"),
        (("data", "format"), "dicom", "data.format: 'dicom' is not allowed"),
        (("model", "input_size"), 100, "model.input_size: 100 is not allowed"),
        (("train", "amp"), "fp8", "train.amp: 'fp8' is not allowed"),
        (
            ("hpo", "search_space", "lora", "lora_r", "choices"),
            [],
            "hpo.search_space.lora.lora_r.choices",
        ),
        (("hpo", "search_space", "lora", "learning_rate", "low"), 1.0, "must be <= high"),
        (("hpo", "search_space", "full", "learning_rate", "low"), 0.0, "log scale needs low > 0"),
        (
            ("hpo", "search_space", "linear_probe", "dropout", "type"),
            "normal",
            "hpo.search_space.linear_probe.dropout.type",
        ),
        (("seed",), -1, r"seed: -1 is not allowed; must be an integer in \[0, 2\*\*32\)"),
        (("train_best", "early_stopping_patience"), 0, "train_best.early_stopping_patience: 0"),
        (("model", "num_classes"), 7, "model.num_classes: 7 is not allowed; must be 2-5"),
        (("model", "lora_targets"), ["qkvx"], "model.lora_targets[0]: 'qkvx' is not allowed"),
        (("train", "device"), "gpu", "train.device: 'gpu' is not allowed; use auto, cpu, cuda"),
        (("train", "eval_batch_size"), 0, "train.eval_batch_size: 0 is not allowed"),
        (("data", "skip_bad_rows"), 1.0, "data.skip_bad_rows: expected true or false, got 1.0"),
        (("data", "skip_bad_rows"), "TRUE", "data.skip_bad_rows: expected true or false"),
        (
            ("hpo", "search_space", "lora", "batch_size", "choices"),
            [0, 16],
            "hpo.search_space.lora.batch_size.choices[0]: 0 is not allowed",
        ),
        (
            ("hpo", "search_space", "lora", "warmup"),
            {"type": "int", "low": 0, "high": 2},
            "hpo.search_space.lora.warmup: 'warmup' is not allowed",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, path, value, message):
    data = repo_params()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message if "\\" in message else re.escape(message)):
        load_params(write(tmp_path, data))


def test_defaults_fill_missing_sections(tmp_path):
    params = load_params(
        write(
            tmp_path,
            {
                "seed": 7,
                "hpo": {"search_space": {"lora_r": {"type": "categorical", "choices": [4]}}},
            },
        )
    )
    assert params.seed == 7 and params.train.class_balance == "loss"
    assert params.hpo.num_epochs == 10 and params.hpo.early_stopping_patience == 3


def test_eval_dataset_named_test_is_refused(tmp_path):
    data = repo_params()
    data["evaluate"]["datasets"][0]["name"] = "test"
    with pytest.raises(ConfigError, match="evaluate.datasets"):
        load_params(write(tmp_path, data))


def test_exponents_written_by_dvc_exp_run_are_numbers(tmp_path):
    """`dvc exp run -S x=1e-5` writes `1e-05`, which YAML 1.1 (PyYAML) reads as text."""
    text = (REPO / "params.yaml").read_text()
    text = text.replace("low: 1.0e-4", "low: 1e-05").replace(
        "weight_decay: 0.05", "weight_decay: 1e-04"
    )
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.hpo.search_space["learning_rate"]["low"] == 1e-5
    assert params.train.weight_decay == 1e-4


def test_missing_key_of_an_evaluation_dataset_is_named(tmp_path):
    data = repo_params()
    del data["evaluate"]["datasets"][0]["images"]
    with pytest.raises(ConfigError) as err:
        load_params(write(tmp_path, data))
    assert str(err.value) == (
        "evaluate.datasets[0].images: missing; required keys here: name, format, csv, images"
    )


def tab_indented(text: str) -> str:
    return text.replace("\n  n_trials:", "\n\tn_trials:")


def tab_line() -> int:
    lines = tab_indented((REPO / "params.yaml").read_text()).splitlines()
    return next(i for i, text in enumerate(lines, start=1) if text.startswith("\t"))


@pytest.mark.parametrize(
    ("edit", "line", "stages"),
    [
        (
            tab_indented,
            "error: params.yaml: line {tab}, column 1: not valid YAML (found character '\\t' "
            "that cannot start any token); indent with spaces, not tabs",
            ("prepare_split", "hpo_search", "train_best", "evaluate_cross_dataset"),
        ),
        (
            lambda text: text.replace("      images: data/demo/messidor/IMAGES\n", ""),
            "error: evaluate.datasets[0].images: missing; required keys here: name, format, "
            "csv, images",
            ("evaluate_cross_dataset",),
        ),
        (
            lambda text: text.replace("seed: 42", "seed: -1"),
            "error: seed: -1 is not allowed; must be an integer in [0, 2**32)",
            ("hpo_search",),
        ),
    ],
)
def test_bad_params_file_stops_the_stages_in_one_line(
    tmp_path, monkeypatch, capsys, edit, line, stages
):
    text = edit((REPO / "params.yaml").read_text())
    assert text != (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    for stage in stages:
        code, err = run_script(REPO / f"stages/{stage}.py", tmp_path, monkeypatch, capsys)
        assert (code, err.strip()) == (2, line.format(tab=tab_line())), stage


def test_a_bad_params_file_is_one_line_and_exit_code_2_in_a_real_process(tmp_path):
    """What the in-process runs above stand for: a separate `python stages/...` process (the
    check-params stage: it imports no torch, so the process costs a fraction of a second)."""
    (tmp_path / "params.yaml").write_text(tab_indented((REPO / "params.yaml").read_text()))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages/check_params.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: params.yaml: line ")

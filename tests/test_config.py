from pathlib import Path

import pytest
import yaml

from retfound_hpo.config import load_params
from retfound_hpo.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


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
        (("hpo", "search_space", "lora_r", "choices"), [], "hpo.search_space.lora_r.choices"),
        (("hpo", "search_space", "learning_rate", "low"), 1.0, "must be <= high"),
        (("hpo", "search_space", "learning_rate", "low"), 0.0, "log scale needs low > 0"),
        (("hpo", "search_space", "dropout", "type"), "normal", "hpo.search_space.dropout.type"),
        (
            ("hpo", "search_space", "warmup"),
            {"type": "int", "low": 0, "high": 2},
            "hpo.search_space.warmup: 'warmup' is not allowed",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, path, value, message):
    data = repo_params()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
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

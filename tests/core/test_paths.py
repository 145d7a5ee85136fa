"""Params that become paths: a name is a plain name, an output folder stays inside the project and
never holds another stage's outputs or an input; dvc.yaml's outputs follow the params."""

import re
import subprocess

import pytest

from conftest import REPO, repo_params
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params_yaml import load_params

DATASET = {"name": "other", "format": "messidor", "csv": "x.csv", "images": "imgs"}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../models", "becomes a folder name"),
        ("", "becomes a folder name"),
        ("..", "becomes a folder name"),
        ("a/b", "becomes a folder name"),
        ("train", "names must be unique and not ['train', 'val', 'test']"),
        ("test", "names must be unique and not ['train', 'val', 'test']"),
    ],
)
def test_a_dataset_name_is_a_plain_name(tmp_path, name, problem):
    datasets = [{**DATASET, "name": name}]
    with pytest.raises(ConfigError, match=re.escape(f"evaluate.datasets[0].name: {name!r}")) as e:
        load_params(repo_params(tmp_path, evaluate__datasets=datasets))
    assert problem in str(e.value)


def test_dataset_names_are_unique(tmp_path):
    datasets = [DATASET, {**DATASET, "csv": "y.csv"}]
    with pytest.raises(ConfigError, match=re.escape("evaluate.datasets[1].name: 'other'")):
        load_params(repo_params(tmp_path, evaluate__datasets=datasets))


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "search@1a2b3c4d"])
def test_a_study_name_is_a_plain_name(tmp_path, name):
    with pytest.raises(ConfigError, match=re.escape(f"hpo.study_name: {name!r} is not allowed")):
        load_params(repo_params(tmp_path, hpo__study_name=name))


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("hpo__output_dir", "/tmp/optuna", "outside the project"),
        ("hpo__output_dir", "../optuna", "outside the project"),
        ("hpo__output_dir", ".", "the project folder itself"),
        ("data__prepared_dir", "src/prepared", "inside the project's own src/"),
        ("evaluate__output_dir", ".git/eval", "inside the project's own .git/"),
        # a folder its stage replaces would take another's outputs or an input with it
        ("train_best__output_dir", "models", "it holds model.checkpoint"),
        ("train_best__seeds_dir", "models/best_model/seeds", "overlaps train_best.output_dir"),
        ("data__prepared_dir", "data/demo/prepared", "overlaps data.demo.out_dir"),
        ("evaluate__output_dir", "results", "overlaps hpo.output_dir"),
        ("evaluate__output_dir", "results/data/eval", "overlaps prepare-split's summary"),
        ("hpo__output_dir", "results/eval/optuna", "overlaps evaluate.output_dir"),
    ],
)
def test_an_output_folder_stays_inside_the_project_on_its_own(tmp_path, key, value, problem):
    dotted = key.replace("__", ".")
    with pytest.raises(ConfigError, match=re.escape(f"{dotted}: {value!r} is not allowed")) as e:
        load_params(repo_params(tmp_path, **{key: value}))
    assert problem in str(e.value)


def test_an_absolute_folder_inside_the_project_is_fine(tmp_path):
    """The project is where params.yaml is: absolute paths inside it are the same folders."""
    params = load_params(repo_params(tmp_path, hpo__output_dir=str(tmp_path / "optuna")))
    assert params.hpo.study_dir == tmp_path / "optuna/retfound_lora_search"


def test_real_data_may_not_live_in_the_demo_folder(tmp_path):
    """With the demo on, its labels and images are prepare-split's outputs; with it off, data
    inside data.demo.out_dir would be replaced by the next demo run."""
    load_params(repo_params(tmp_path))  # the committed demo params
    path = repo_params(tmp_path, data__demo__enabled=False)
    with pytest.raises(ConfigError, match=re.escape("data.demo.out_dir: 'data/demo'")) as e:
        load_params(path)
    assert "it holds data.csv" in str(e.value)


PATH_PARAMS = {  # params that name a stage's output folder, and their dvc.yaml outputs
    "data.demo.out_dir": "x/demo",
    "data.splits_dir": "x/splits",
    "data.prepared_dir": "x/prepared",
    "hpo.output_dir": "x/optuna",
    "train_best.output_dir": "x/best",
    "train_best.seeds_dir": "x/seeds",
    "train_best.results_dir": "x/train",
    "evaluate.output_dir": "x/eval",
}


def test_dvc_yaml_outputs_follow_the_path_params(tmp_path):
    """Moving any output folder in params.yaml moves it in DVC's outputs too, so no search runs
    before DVC misses its outputs."""
    from dvc.repo import Repo

    text = (REPO / "dvc.yaml").read_text()
    for key in PATH_PARAMS:
        assert f"${{{key}}}" in text, key
    assert "results/optuna" not in text and "models/best_model" not in text
    sections = {k.replace(".", "__"): v for k, v in PATH_PARAMS.items()}
    repo_params(tmp_path, **sections)
    (tmp_path / "dvc.yaml").write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    Repo.init(tmp_path)
    with Repo(tmp_path) as repo:
        outs = {str(out.def_path) for stage in repo.index.stages for out in stage.outs}
    for key, folder in PATH_PARAMS.items():
        assert any(out == folder or out.startswith(folder + "/") for out in outs), (key, outs)
    assert "x/optuna/retfound_lora_search/study.db" in outs

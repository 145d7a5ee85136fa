"""Bad input as a new user makes it: params and YAML, data files, checkpoints, console commands.
Every case must end in one line that names the key, the row or the file, exit code 2, no
traceback, and nothing changed outside the outputs of the command that stopped (the project's
files are hashed before and after). Cases run in this process (a stage's `__main__` or a
command's `main`); the interruptions that need a real process are in tests/search/."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from conftest import REPO, follow_captured_stderr, fundus_like, run_script

pytestmark = pytest.mark.timeout(300)  # builds a small project once for the module


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # a stage script (stages/<name>.py) or a console command (retfound-...)
    setup: Callable[[Path], None]  # what the user got wrong, applied to a copy of the project
    message: str  # the one line must contain this (it names the key, row or file)
    argv: tuple[str, ...] = ()
    may_change: tuple[str, ...] = ()  # the command's own outputs, relative to the project

    def __str__(self) -> str:
        return self.id


# The project: relative paths, as a user's clone holds them.
PARAMS = {
    "seed": 0,
    "data": {
        "format": "aptos",
        "csv": "data/raw/aptos/train.csv",
        "images": "data/raw/aptos/train_images",
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "demo": {"enabled": False},
    },
    "model": {"checkpoint": "models/backbone.pth", "input_size": 32},
    "train": {"eval_batch_size": 64},
    "hpo": {
        "study_name": "s",
        "n_trials": 1,
        "num_epochs": 1,
        "search_space": {
            "lora_r": {"type": "categorical", "choices": [4]},
            "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [8]},
        },
    },
    "train_best": {"epochs": 1},
    "evaluate": {
        "bootstrap_samples": 0,
        "datasets": [
            {
                "name": "other",
                "format": "messidor",
                "csv": "data/raw/messidor/messidor_data.csv",
                "images": "data/raw/messidor/IMAGES",
            }
        ],
    },
}
APTOS_ROWS = [(f"{i:012x}", i % 5) for i in range(40)]


def write_params(project: Path, **edits) -> None:
    """params.yaml with `section__key=value` edits (None deletes the key)."""
    data = yaml.safe_load(yaml.safe_dump(PARAMS))
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def edit_params(**edits) -> Callable[[Path], None]:
    return lambda project: write_params(project, **edits)


def write_text(rel: str, text: str) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)

    return setup


def write_bytes(rel: str, data: bytes) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        (project / rel).write_bytes(data)

    return setup


def aptos_rows(rows: list[tuple]) -> Callable[[Path], None]:
    body = "".join(f"{a},{b}\n" for a, b in rows)
    return write_text("data/raw/aptos/train.csv", "id_code,diagnosis\n" + body)


def replace_image(index: int, image: Image.Image | bytes) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        path = project / f"data/raw/aptos/train_images/{APTOS_ROWS[index][0]}.png"
        if isinstance(image, bytes):
            path.write_bytes(image)
        else:
            image.save(path, format="PNG")

    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        for step in setups:
            step(project)

    return setup


def remove(rel: str) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        path = project / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def nothing(project: Path) -> None:
    pass


ROW = APTOS_ROWS
CASES = [
    # params.yaml as a file
    Case(
        "tab_indented_yaml",
        "check_params",
        write_text("params.yaml", "seed: 1\ndata:\n\tcsv: x\n"),
        "params.yaml: line 3, column 1: not valid YAML",
    ),
    Case(
        "params_not_a_mapping",
        "check_params",
        write_text("params.yaml", "- seed\n"),
        "params: expected a mapping",
    ),
    Case(
        "params_binary",
        "check_params",
        write_bytes("params.yaml", b"\xff\xfe\x00seed"),
        "params.yaml: not a text file",
    ),
    Case("params_missing", "check_params", remove("params.yaml"), "params.yaml: file not found"),
    Case(
        "unknown_top_level_key",
        "check_params",
        edit_params(hpo_n_trials=3),
        "hpo_n_trials: unknown key",
    ),
    Case("misspelt_key", "hpo_search", edit_params(hpo__n_trails=3), "hpo.n_trails: unknown key"),
    Case(
        "wrong_type",
        "hpo_search",
        edit_params(hpo__n_trials="many"),
        "hpo.n_trials: expected int, got 'many'",
    ),
    Case("negative_seed", "prepare_split", edit_params(seed=-1), "seed: -1 is not allowed"),
    Case(
        "unknown_format",
        "prepare_split",
        edit_params(data__format="dicom"),
        "data.format: 'dicom' is not allowed",
    ),
    Case(
        "val_fraction_too_big",
        "prepare_split",
        edit_params(data__val_fraction=0.6),
        "data.val_fraction: 0.6 is not allowed",
    ),
    Case(
        "input_size_not_patch_multiple",
        "hpo_search",
        edit_params(model__input_size=100),
        "model.input_size: 100 is not allowed",
    ),
    Case(
        "unknown_arch",
        "hpo_search",
        edit_params(model__arch="vit_huge"),
        "model.arch: 'vit_huge' is not allowed",
    ),
    Case(
        "empty_search_space",
        "hpo_search",
        edit_params(hpo__search_space={}),
        "hpo.search_space: {} is not allowed",
    ),
    Case(
        "low_above_high",
        "hpo_search",
        edit_params(hpo__search_space={"learning_rate": {"type": "float", "low": 1, "high": 0.1}}),
        "hpo.search_space.learning_rate.low: 1 is not allowed; must be <= high",
    ),
    Case(
        "log_scale_from_zero",
        "hpo_search",
        edit_params(
            hpo__search_space={"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}
        ),
        "log scale needs low > 0",
    ),
    Case(
        "unknown_hyperparameter",
        "hpo_search",
        edit_params(hpo__search_space={"momentum": {"type": "float", "low": 0, "high": 1}}),
        "hpo.search_space.momentum: 'momentum' is not allowed",
    ),
    Case(
        "condition_on_missing_entry",
        "hpo_search",
        edit_params(
            hpo__search_space={
                "lora_r": {
                    "type": "categorical",
                    "choices": [4],
                    "condition": {"param": "rank", "values": [1]},
                }
            }
        ),
        "hpo.search_space.lora_r.condition.param: 'rank' is not allowed",
    ),
    Case(
        "enqueued_value_outside_space",
        "hpo_search",
        edit_params(hpo__enqueue_trials=[{"lora_r": 64}]),
        "hpo.enqueue_trials[0].lora_r: 64 is not allowed",
    ),
    Case(
        "storage_bad_scheme",
        "hpo_search",
        edit_params(hpo__storage="mysql://x/y"),
        "hpo.storage: 'mysql://x/y' is not allowed",
    ),
    Case(
        "referable_target_above_1",
        "evaluate_cross_dataset",
        edit_params(evaluate__referable_target=1.5),
        "evaluate.referable_target: 1.5",
    ),
    Case(
        "device_that_does_not_exist",
        "check_params",
        edit_params(train__device="gpu"),
        "train.device: 'gpu' is not allowed",
    ),
    Case(
        "repeated_seeds",
        "train_best",
        edit_params(train_best__seeds=[1, 1]),
        "train_best.seeds: [1, 1] is not allowed",
    ),
    Case(
        "unknown_lora_target",
        "hpo_search",
        edit_params(model__lora_targets=["qkvx"]),
        "model.lora_targets[0]: 'qkvx' is not allowed",
    ),
    Case(
        "dataset_without_images_key",
        "prepare_split",
        edit_params(evaluate__datasets=[{"name": "x", "format": "messidor", "csv": "a.csv"}]),
        "evaluate.datasets[0].images: missing",
    ),
    # names and folders that would become paths outside a stage's own outputs
    Case(
        "dataset_named_as_a_path",
        "prepare_split",
        edit_params(
            evaluate__datasets=[{**PARAMS["evaluate"]["datasets"][0], "name": "../../models"}]
        ),
        "evaluate.datasets[0].name: '../../models' is not allowed",
    ),
    Case(
        "dataset_named_empty",
        "prepare_split",
        edit_params(evaluate__datasets=[{**PARAMS["evaluate"]["datasets"][0], "name": ""}]),
        "evaluate.datasets[0].name: '' is not allowed",
    ),
    Case(
        "dataset_named_train",
        "prepare_split",
        edit_params(evaluate__datasets=[{**PARAMS["evaluate"]["datasets"][0], "name": "train"}]),
        "evaluate.datasets[0].name: 'train' is not allowed",
    ),
    Case(
        "study_named_dotdot",
        "hpo_search",
        edit_params(hpo__study_name=".."),
        "hpo.study_name: '..' is not allowed",
    ),
    Case(
        "output_dir_outside_project",
        "hpo_search",
        edit_params(hpo__output_dir="/tmp/optuna"),
        "hpo.output_dir: '/tmp/optuna' is not allowed; outside the project",
    ),
    Case(
        "best_model_dir_holds_checkpoint",
        "train_best",
        edit_params(train_best__output_dir="models"),
        "train_best.output_dir: 'models' is not allowed; it holds model.checkpoint",
    ),
    Case(
        "eval_dir_overlaps_search",
        "evaluate_cross_dataset",
        edit_params(evaluate__output_dir="results"),
        "evaluate.output_dir: 'results' is not allowed; it overlaps",
    ),
    Case(
        "prepared_dir_in_code",
        "prepare_split",
        edit_params(data__prepared_dir="src/prepared"),
        "data.prepared_dir: 'src/prepared' is not allowed; inside the project's own src/",
    ),
    # data files
    Case(
        "labels_file_missing",
        "prepare_split",
        remove("data/raw/aptos/train.csv"),
        "train.csv: labels file not found",
    ),
    Case(
        "labels_file_empty",
        "prepare_split",
        write_text("data/raw/aptos/train.csv", ""),
        "train.csv",
    ),
    Case(
        "grade_out_of_range",
        "prepare_split",
        aptos_rows([*ROW[:5], (ROW[5][0], 7), *ROW[6:]]),
        "train.csv: row 7",
    ),
    Case(
        "grade_not_a_number",
        "prepare_split",
        aptos_rows([*ROW[:5], (ROW[5][0], "x"), *ROW[6:]]),
        "train.csv: row 7",
    ),
    Case(
        "duplicate_id",
        "prepare_split",
        aptos_rows([*ROW[:7], (ROW[3][0], 1), *ROW[8:]]),
        "train.csv: row 9",
    ),
    Case(
        "image_missing",
        "prepare_split",
        remove(f"data/raw/aptos/train_images/{ROW[4][0]}.png"),
        f"{ROW[4][0]}.png",
    ),
    Case(
        "image_folder_missing",
        "prepare_split",
        remove("data/raw/aptos/train_images"),
        "train_images",
    ),
    Case(
        "unreadable_image",
        "prepare_split",
        replace_image(9, b"not a png"),
        f"row 11 data/raw/aptos/train_images/{ROW[9][0]}.png",
    ),
    Case(
        "black_image",
        "prepare_split",
        replace_image(9, Image.new("RGB", (64, 48))),
        "no retina found",
    ),
    Case(
        "one_pixel_image",
        "prepare_split",
        replace_image(9, Image.new("RGB", (1, 1), "red")),
        "not a fundus photograph: 1x1 px",
    ),
    Case(
        "strip_image",
        "prepare_split",
        replace_image(9, Image.new("RGB", (4000, 10), "red")),
        "not a fundus photograph: 4000x10 px, an aspect ratio",
    ),
    Case(
        "white_square",
        "prepare_split",
        replace_image(9, Image.new("RGB", (300, 300), "white")),
        "of the field is pure white",
    ),
    Case(
        "messidor_flag_misspelt",
        "prepare_split",
        write_text(
            "data/raw/messidor/messidor_data.csv",
            "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
            "IM000000.jpg,1,0,maybe\n",
        ),
        "messidor_data.csv: row 2",
    ),
    Case(
        "grade_above_num_classes",
        "prepare_split",
        edit_params(model__num_classes=3),
        "model.num_classes: 3 is not allowed",
    ),
    Case(
        "too_few_per_grade",
        "prepare_split",
        aptos_rows([r for r in ROW if r[1] != 4][:-4] + [r for r in ROW if r[1] == 4][:2]),
        "grade 4 has 2 patient(s)",
    ),
    Case(
        "one_grade_only",
        "prepare_split",
        aptos_rows([(name, 0) for name, _ in ROW]),
        "grade 1 has 0 patient(s) (per grade: 0: 40, 1: 0",
    ),
    Case(
        "fractions_leave_no_train",
        "prepare_split",
        edit_params(data__val_fraction=0.49, data__test_fraction=0.49),
        "needs at least 50 per grade",
    ),
    Case(
        "csv_format_without_columns",
        "prepare_split",
        edit_params(data__format="csv"),
        "data.id_column",
    ),
    # the search's storage and launcher
    Case(
        "study_db_not_a_database",
        "hpo_search",
        write_text("results/optuna/s/study.db", "not a database\n"),
        "results/optuna/s/study.db",
    ),
    Case(
        "output_dir_is_a_file",
        "hpo_search",
        write_text("results/optuna", "a file where the folder goes\n"),
        "hpo.output_dir",
    ),
    Case(
        "postgres_refused_password_hidden",
        "hpo_search",
        edit_params(hpo__storage="postgresql://me:s3cret@127.0.0.1:9/db"),
        "postgresql://me:***@127.0.0.1:9/db",
    ),
    Case(
        "slurm_on_sqlite",
        "hpo_search",
        edit_params(hpo__launcher="slurm"),
        "hpo.storage: None is not allowed; with hpo.launcher slurm",
    ),
    # adaptations
    Case(
        "lora_key_with_full_fine_tuning",
        "hpo_search",
        edit_params(
            model__adaptation="full",
            hpo__search_space={"full": {"lora_r": {"type": "categorical", "choices": [4]}}},
        ),
        "hpo.search_space.full.lora_r: 'lora_r' is not allowed",
    ),
    Case(
        "keep_adapters_with_linear_probe",
        "hpo_search",
        edit_params(model__adaptation="linear_probe", hpo__keep_adapters=True),
        "hpo.keep_adapters: True is not allowed",
    ),
    # checkpoints
    Case(
        "checkpoint_missing",
        "hpo_search",
        remove("models/backbone.pth"),
        "model.checkpoint: models/backbone.pth not found",
    ),
    Case(
        "checkpoint_empty",
        "hpo_search",
        write_bytes("models/backbone.pth", b""),
        "models/backbone.pth: empty file",
    ),
    Case(
        "checkpoint_is_html",
        "hpo_search",
        write_text("models/backbone.pth", "<!DOCTYPE html><html>Sign in</html>"),
        "models/backbone.pth: an HTML page, not a checkpoint",
    ),
    Case(
        "checkpoint_truncated",
        "hpo_search",
        lambda p: (p / "models/backbone.pth").write_bytes(
            (p / "models/backbone.pth").read_bytes()[:5000]
        ),
        "models/backbone.pth: truncated or corrupt checkpoint",
    ),
    Case(
        "checkpoint_of_another_arch",
        "hpo_search",
        lambda p: torch.save(
            {"model": VisionTransformer(32, embed_dim=96, depth=2, num_heads=2).state_dict()},
            p / "models/backbone.pth",
        ),
        "models/backbone.pth does not fit model.arch vit_demo; wrong shapes: ['cls_token (1, 1, "
        "96) vs",
    ),
    Case(
        "checkpoint_is_a_folder",
        "hpo_search",
        both(remove("models/backbone.pth"), lambda p: (p / "models/backbone.pth").mkdir()),
        "models/backbone.pth: a folder, not a checkpoint file",
    ),
    # a stage run before the one it needs
    Case(
        "search_without_prepared_data",
        "hpo_search",
        remove("data/prepared"),
        "data/prepared/train: no prepared data",
    ),
    Case(
        "train_best_before_the_search",
        "train_best",
        nothing,
        "best_params.json: not found; run the hpo-search stage first",
    ),
    Case(
        "evaluation_without_a_model",
        "evaluate_cross_dataset",
        remove("models/best_model"),
        "models/best_model: not a model folder",
    ),
    # console commands
    Case(
        "check_unknown_key",
        "retfound-check",
        edit_params(hpo__nonsense=1),
        "hpo.nonsense: unknown key",
    ),
    Case(
        "predict_without_model",
        "retfound-predict",
        nothing,
        "no-model: not a model folder",
        argv=("no-model", "data/raw/aptos/train_images", "out.csv"),
    ),
    Case(
        "predict_empty_folder",
        "retfound-predict",
        lambda p: (p / "empty").mkdir(),
        "empty: no images",
        argv=("models/best_model", "empty", "out.csv"),
    ),
    Case(
        "predict_csv_without_path",
        "retfound-predict",
        write_text("list.csv", "id\nx\n"),
        "list.csv: needs a 'path' column",
        argv=("models/best_model", "list.csv", "out.csv"),
    ),
    Case(
        "predict_over_an_existing_file",
        "retfound-predict",
        write_text("out.csv", "an earlier run's grades\n"),
        "out.csv: already exists",
        argv=("models/best_model", "data/raw/aptos/train_images", "out.csv"),
    ),
    Case(
        "predict_into_a_folder",
        "retfound-predict",
        nothing,
        "models: a folder; name the CSV file",
        argv=("models/best_model", "data/raw/aptos/train_images", "models"),
    ),
    Case(
        "worker_params_is_a_folder",
        "retfound-worker",
        nothing,
        "--params data: is a folder",
        argv=("--params", "data"),
    ),
    Case(
        "worker_for_a_study_never_started",
        "retfound-worker",
        nothing,
        "hpo.study_name: no study",
        argv=("--params", "params.yaml"),
    ),
    Case(
        "compare_unknown_variant",
        "retfound-compare",
        nothing,
        "'no-such-experiment': neither a folder nor a DVC experiment",
        argv=("no-such-experiment", "models", "--repo", "."),
    ),
    Case(
        "compare_folders_without_predictions",
        "retfound-compare",
        lambda p: ((p / "a").mkdir(), (p / "b").mkdir()),
        "share no dataset",
        argv=("a", "b", "--repo", "."),
    ),
    Case(
        "export_without_model",
        "retfound-export",
        nothing,
        "no-model: not a model folder",
        argv=("no-model", "out"),
    ),
]


# What each stage may write (its dvc.yaml outputs, for PARAMS): nothing else may change.
OUTPUTS = {
    "prepare_split": ("data/prepared", "data/splits", "data/demo", "results/data"),
    "hpo_search": ("results/optuna/s/",),
    "train_best": ("models/best_model", "models/seeds", "results/train"),
    "evaluate_cross_dataset": ("results/eval",),
}


def console(name: str) -> Callable[[list[str]], None]:
    from retfound_hpo.core.params_yaml import main as check
    from retfound_hpo.evaluation.compare import main as compare
    from retfound_hpo.evaluation.predict import main as predict
    from retfound_hpo.model.export import main as export
    from retfound_hpo.search.workers import main as worker

    return {
        "retfound-check": check,
        "retfound-compare": compare,
        "retfound-export": export,
        "retfound-predict": predict,
        "retfound-worker": worker,
    }[name]


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A small project a user could have made: 40 APTOS-layout photographs, 10 Messidor-layout
    ones, a demo-size backbone in RETFound's layout, prepared sets and an (untrained) model."""
    from retfound_hpo.core.params import ModelConfig
    from retfound_hpo.core.params_yaml import load_params
    from retfound_hpo.data.prepare import prepare_split
    from retfound_hpo.model.adapters import build_model
    from retfound_hpo.model.saved import save_trained_model
    from retfound_hpo.training.pretrain_demo import MaskedAutoencoder

    root = tmp_path_factory.mktemp("bad_inputs") / "project"
    images = root / "data/raw/aptos/train_images"
    images.mkdir(parents=True)
    for i, (name, _) in enumerate(APTOS_ROWS):
        Image.fromarray(fundus_like(np.random.default_rng(i), 32, 8)).save(images / f"{name}.png")
    aptos_rows(APTOS_ROWS)(root)
    messidor = root / "data/raw/messidor/IMAGES"
    messidor.mkdir(parents=True)
    rows = []
    for i in range(10):
        name = f"IM{i:06d}.jpg"
        Image.fromarray(fundus_like(np.random.default_rng(100 + i), 32, 8)).save(messidor / name)
        rows.append(f"{name},{i % 5},0,1\n")
    header = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
    (messidor.parent / "messidor_data.csv").write_text(header + "".join(rows))
    torch.manual_seed(0)
    (root / "models").mkdir()
    state = MaskedAutoencoder(ModelConfig()).retfound_state_dict()
    torch.save({"model": state}, root / "models/backbone.pth")
    write_params(root)
    params = load_params(root / "params.yaml")
    cwd = Path.cwd()
    try:
        import os

        os.chdir(root)
        prepare_split(params.data, params.evaluate.datasets, input_size=32, num_classes=5, seed=0)
        cfg = params.model
        save_trained_model(build_model(cfg, 4, 8, 0.0), "models/best_model", cfg, {"lora_r": 4})
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_one_line_and_changes_nothing_else(
    case, project, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "project"
    shutil.copytree(project, work)
    case.setup(work)
    before = hashes(work)
    if case.command.startswith("retfound-"):
        monkeypatch.chdir(work)
        capsys.readouterr()
        follow_captured_stderr()
        with pytest.raises(SystemExit) as stop:
            console(case.command)(list(case.argv))
        code, err = stop.value.code, capsys.readouterr().err
    else:
        script = REPO / "stages" / f"{case.command}.py"
        code, err = run_script(script, work, monkeypatch, capsys, *case.argv)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, (code, err[-2000:])
    assert len(errors) == 1, err[-2000:]  # progress lines (Optuna's "[I ...]") may come before
    assert case.message in errors[0], errors[0]
    assert "Traceback" not in err, err
    assert not any(line.startswith(("[W ", "[E ")) for line in err.splitlines()), err
    after = hashes(work)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    own = OUTPUTS.get(case.command, ()) + case.may_change
    assert {p for p in changed if not p.startswith(own)} == set(), sorted(changed)

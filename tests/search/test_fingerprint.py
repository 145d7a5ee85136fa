"""The fingerprint of a search's inputs: what changes a trial's result changes it, nothing else."""

import dataclasses
import shutil

import numpy as np
import pytest

from conftest import easy_images, fingerprint_of, tiny_params, write_prepared
from retfound_hpo.core.errors import CheckpointError
from retfound_hpo.search.fingerprint import (
    dataset_digest,
    describe_changes,
    file_digest,
    fingerprint_id,
)
from retfound_hpo.training.inputs import CachedImages, load_cached


def test_prepared_images_on_disk_digest_like_the_same_array(tmp_path):
    data = easy_images(40)
    write_prepared(tmp_path / "train", data)
    assert dataset_digest(load_cached(tmp_path / "train")) == dataset_digest(data)


def test_one_pixel_or_one_grade_changes_the_digest():
    data = easy_images(40)
    pixels = np.array(data.images)
    pixels[17, 3, 5, 1] ^= 1
    grades = data.grades.copy()
    grades[5] = (grades[5] + 1) % 5
    digests = {
        dataset_digest(data),
        dataset_digest(CachedImages(pixels, data.grades)),
        dataset_digest(CachedImages(data.images, grades)),
    }
    assert len(digests) == 3


def test_every_byte_counts_past_the_first_reads(tmp_path):
    """A real RETFound file is 1.2 GB and a prepared set can be larger: a change far past the
    first read (16 MiB) changes the digest, of a file and of prepared images alike."""
    size = 20 * 2**20
    path = tmp_path / "weights.pth"
    path.write_bytes(bytes(size))
    before = file_digest(path)
    with path.open("r+b") as f:
        f.seek(size - 10)
        f.write(b"\x01")
    assert file_digest(path) != before

    pixels = np.zeros((1400, 64, 64, 3), np.uint8)  # 17.2 MB
    grades = np.zeros(1400, np.int64)
    before = dataset_digest(CachedImages(pixels, grades))
    pixels[-1, -1, -1, -1] = 1
    assert dataset_digest(CachedImages(pixels, grades)) != before


@pytest.fixture
def data():
    return easy_images(60), easy_images(30, seed=1)


def test_checkpoint_content_counts_not_its_path(tmp_path, mae_checkpoint, data):
    before = fingerprint_of(tiny_params(tmp_path, mae_checkpoint), *data)
    moved = shutil.copy(mae_checkpoint, tmp_path / "elsewhere.pth")
    assert fingerprint_of(tiny_params(tmp_path, moved), *data) == before
    with open(moved, "ab") as f:  # other bytes under the same path
        f.write(b"\0")
    after = fingerprint_of(tiny_params(tmp_path, moved), *data)
    assert describe_changes(before, after) == "model.checkpoint (content)"


@pytest.mark.parametrize(
    ("section", "values", "changed"),
    [
        ("train", {"weight_decay": 0.1}, "train.weight_decay: 0.05 -> 0.1"),
        ("train", {"augment": "randaugment"}, "train.augment: 'basic' -> 'randaugment'"),
        ("model", {"drop_path_rate": 0.2}, "model.drop_path_rate: 0.1 -> 0.2"),
        ("hpo", {"num_epochs": 5}, "hpo.num_epochs: 2 -> 5"),
        ("hpo", {"metric": "kappa"}, "hpo.metric: 'accuracy' -> 'kappa'"),
        ("hpo", {"search_space": {"lora_r": {"type": "categorical", "choices": [4]}}},
         "hpo.search_space"),
        # How a trial runs, not what it computes: the same study.
        ("train", {"num_workers": 2, "eval_batch_size": 7, "device": "cpu"}, ""),
        ("hpo", {"n_trials": 9, "pruner": "none", "sampler": "random"}, ""),
    ],
)  # fmt: skip
def test_what_changes_a_trial_changes_the_fingerprint(
    tmp_path, mae_checkpoint, data, section, values, changed
):
    before = fingerprint_of(tiny_params(tmp_path, mae_checkpoint), *data)
    after = fingerprint_of(tiny_params(tmp_path, mae_checkpoint, **{section: values}), *data)
    assert describe_changes(before, after) == changed
    assert (fingerprint_id(before) == fingerprint_id(after)) == (changed == "")


def test_seed_and_data_are_part_of_it(tmp_path, mae_checkpoint, data):
    params = tiny_params(tmp_path, mae_checkpoint)
    before = fingerprint_of(params, *data)
    reseeded = fingerprint_of(dataclasses.replace(params, seed=1), *data)
    assert describe_changes(before, reseeded) == "seed: 0 -> 1"
    other_val = fingerprint_of(params, data[0], easy_images(30, seed=2))
    assert describe_changes(before, other_val) == "data.val (prepared images)"


def test_a_missing_checkpoint_is_named(tmp_path, data):
    params = tiny_params(tmp_path, tmp_path / "RETFound_cfp_weights.pth")
    with pytest.raises(CheckpointError, match="model.checkpoint: .*RETFound_cfp_weights.pth not"):
        fingerprint_of(params, *data)


def test_the_adaptation_is_part_of_it(tmp_path, mae_checkpoint, data):
    """A full fine-tune's trials are not LoRA's, even with every other value the same."""
    space = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    recipe = dict(augment="basic", random_erasing=0.0, warmup_epochs=0, label_smoothing=0.0)
    fingerprints = [
        fingerprint_of(
            tiny_params(
                tmp_path,
                mae_checkpoint,
                model={"adaptation": adaptation, "drop_path_rate": 0.1},
                train={**recipe, "layer_decay": 1.0},
                hpo={"search_space": space},
            ),
            *data,
        )
        for adaptation in ("lora", "full")
    ]
    assert describe_changes(*fingerprints) == "model.adaptation: 'lora' -> 'full'"

"""Choosing model.arch and model.adaptation is enough: the input size, the normalisation and the
training recipe follow, any value given wins, and what cannot work stops in one line."""

import logging
import re

import pytest

from conftest import repo_params
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params_yaml import load_params


def load_with(tmp_path, **changes):
    """The repository's params.yaml with `changes` ("model.adaptation": "full", ...)."""
    return load_params(
        repo_params(tmp_path, **{k.replace(".", "__"): v for k, v in changes.items()})
    )


RECIPE = ("augment", "random_erasing", "warmup_epochs", "label_smoothing", "layer_decay")


@pytest.mark.parametrize(
    ("adaptation", "recipe", "drop_path", "searched"),
    [
        ("lora", ("basic", 0.0, 0, 0.0, 1.0), 0.1, {"lora_r", "lora_alpha"}),
        ("full", ("randaugment", 0.25, 2, 0.1, 0.65), 0.2, {"layer_decay"}),
        ("linear_probe", ("randaugment", 0.25, 2, 0.1, 1.0), 0.2, set()),
    ],
)
def test_the_adaptation_brings_its_recipe_and_its_search_space(
    tmp_path, adaptation, recipe, drop_path, searched
):
    """What `dvc exp run -S model.adaptation=...` runs with, from the committed params.yaml."""
    params = load_with(tmp_path, **{"model.adaptation": adaptation})
    assert tuple(getattr(params.train, key) for key in RECIPE) == recipe
    assert params.model.drop_path_rate == drop_path
    space = params.hpo.search_space  # the adaptation's section
    assert {"learning_rate", "batch_size", "dropout"} <= set(space)
    assert set(space) - {"learning_rate", "batch_size", "dropout"} == searched


def test_a_value_given_wins_over_the_recipe(tmp_path):
    params = load_with(
        tmp_path,
        **{"model.adaptation": "full", "train.layer_decay": 0.8, "model.drop_path_rate": 0.0},
    )
    assert params.train.layer_decay == 0.8 and params.model.drop_path_rate == 0.0
    assert params.train.label_smoothing == 0.1  # the rest still from the recipe


@pytest.mark.parametrize(
    ("arch", "size", "normalization"),
    [
        ("vit_demo", 96, "imagenet"),
        ("vit_large_patch16_224", 224, "imagenet"),
        ("vit_large_patch14_dinov2", 224, "imagenet"),
        ("vit_small_patch14_reg4_dinov2", 392, "inception"),
        ("vit_large_patch16_dinov3", 224, "imagenet"),
    ],
)
def test_the_arch_carries_its_input_size_and_normalisation(tmp_path, arch, size, normalization):
    params = load_with(tmp_path, **{"model.arch": arch})
    assert (params.model.input_size, params.model.normalization) == (size, normalization)


def test_an_override_of_the_archs_size_or_normalisation_is_stated(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="retfound_hpo.core.recipes"):
        load_with(tmp_path, **{"model.input_size": 128, "model.normalization": "inception"})
    assert "model.input_size 128 overrides the demo backbone" in caplog.text
    assert "resampled" in caplog.text
    assert "model.normalization inception overrides" in caplog.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model.adaptation": "adapter"},
            "model.adaptation: 'adapter' is not allowed; choose one of ['lora', 'full', "
            "'linear_probe']",
        ),
        (  # RETFound-Green's weights exist at 392 px only: no silent resize
            {"model.arch": "vit_small_patch14_reg4_dinov2", "model.input_size": 224},
            "model.input_size: 224 is not allowed; RETFound-Green (ViT-S/14, 4 registers) was "
            "trained at 392 px only (its weights' position grid); set 392 or null",
        ),
        (
            {"model.normalization": "imagenet21k"},
            "model.normalization: 'imagenet21k' is not allowed; choose one of ['imagenet', "
            "'inception']",
        ),
        (
            {"model.adaptation": "full", "hpo.keep_adapters": True},
            "hpo.keep_adapters: True is not allowed; model.adaptation full has no LoRA adapter",
        ),
        (  # a LoRA key in the full fine-tune's section
            {"hpo.search_space.full.lora_r": {"type": "categorical", "choices": [8]}},
            "hpo.search_space.full.lora_r: 'lora_r' is not allowed; model.adaptation full trains "
            "every weight, no LoRA adapters",
        ),
        (  # a LoRA set queued for a full fine-tune
            {"model.adaptation": "full", "hpo.enqueue_trials": [{"lora_r": 8}]},
            "hpo.enqueue_trials[0].lora_r: 'lora_r' is not allowed; not in hpo.search_space",
        ),
        (
            {"train.random_erasing": 1.5},
            "train.random_erasing: 1.5 is not allowed; must be in [0, 1)",
        ),
    ],
)
def test_what_cannot_work_is_one_line_naming_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_with(tmp_path, **changes)
    assert "\n" not in str(err.value)

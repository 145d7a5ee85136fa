import optuna
import pytest

from retfound_hpo.errors import ConfigError
from retfound_hpo.space import check_search_space, suggest_hparams

GUIDE_CONDITIONAL = {
    "lora_r": {"type": "categorical", "choices": [4, 8, 16, 32]},
    "lora_alpha": {
        "type": "categorical",
        "choices": [16, 32],
        "cases": [{"when": {"param": "lora_r", "values": [16, 32]}, "choices": [32, 64, 128]}],
    },
    "warmup_epochs": {
        "type": "int",
        "low": 0,
        "high": 3,
        "condition": {"param": "lora_r", "values": [32]},
    },
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "lora_targets": {"type": "categorical", "choices": ["qkv", "qkv,proj,fc1,fc2"]},
}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "hpo.search_space: {} is not allowed; define at least one"),
        ({"lora_r": {"type": "categorical", "choices": []}}, "hpo.search_space.lora_r.choices"),
        ({"dropout": {"type": "float", "low": 0.5, "high": 0.1}}, "low: 0.5 .*must be <= high"),
        (
            {"learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}},
            "log scale needs low > 0",
        ),
        ({"dropout": {"type": "normal", "low": 0, "high": 1}}, "dropout.type: 'normal'"),
        (
            {"momentum": {"type": "float", "low": 0, "high": 1}},
            "momentum: 'momentum' is not allowed",
        ),
        (
            {"dropout": {"type": "float", "low": 0, "high": 1, "choices": [1]}},
            "dropout.choices: 'choices' is not allowed",
        ),
        (
            {
                "warmup_epochs": {
                    "type": "int",
                    "low": 0,
                    "high": 2,
                    "condition": {"param": "lora_r", "values": [16]},
                }
            },
            r"warmup_epochs.condition.param: 'lora_r' .*name an entry listed before it",
        ),
        (
            {
                "lora_r": {"type": "categorical", "choices": [4]},
                "lora_alpha": {
                    "type": "categorical",
                    "choices": [16],
                    "cases": [{"when": {"param": "lora_r", "values": [4]}, "choices": []}],
                },
            },
            r"lora_alpha.cases\[0\].choices",
        ),
    ],
)
def test_bad_search_space_names_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        check_search_space(space)


def test_guide_conditional_space_is_valid():
    check_search_space(GUIDE_CONDITIONAL)


@pytest.mark.parametrize(
    ("fixed", "expected"),
    [
        (
            {"lora_r": 32, "lora_alpha|lora_r=16/32": 128, "warmup_epochs": 2},
            {"lora_r": 32, "lora_alpha": 128, "warmup_epochs": 2},
        ),
        ({"lora_r": 4, "lora_alpha": 16}, {"lora_r": 4, "lora_alpha": 16}),  # no warmup draw
    ],
)
def test_conditional_draws(fixed, expected):
    fixed = {**fixed, "learning_rate": 1e-4, "lora_targets": "qkv"}
    drawn = suggest_hparams(optuna.trial.FixedTrial(fixed), GUIDE_CONDITIONAL)
    assert {k: drawn[k] for k in expected} == expected
    assert ("warmup_epochs" in drawn) == ("warmup_epochs" in expected)


def test_conditional_space_in_a_real_study():
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5), direction="maximize"
    )
    seen = []

    def objective(trial):
        drawn = suggest_hparams(trial, GUIDE_CONDITIONAL)
        seen.append(drawn)
        return drawn["lora_alpha"] / drawn["lora_r"]

    study.optimize(objective, n_trials=25)
    for d in seen:
        allowed = [32, 64, 128] if d["lora_r"] >= 16 else [16, 32]
        assert d["lora_alpha"] in allowed
        assert ("warmup_epochs" in d) == (d["lora_r"] == 32)

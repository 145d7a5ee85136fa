import optuna
import pytest

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.space import check_search_space, normalize_search_space
from retfound_hpo.core.space_sections import active_space
from retfound_hpo.search.suggest import suggest_hparams

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


LORA_R = {"type": "categorical", "choices": [4, 8, 16, 32]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        # Values a trial would fail with: refused before any trial runs.
        (
            {"batch_size": {"type": "categorical", "choices": [0, 16]}},
            r"batch_size.choices\[0\]: 0 is not allowed; batch_size must be an integer >= 1",
        ),
        (
            {"batch_size": {"type": "float", "low": 8, "high": 32}},
            r"batch_size.type: 'float' is not allowed; batch_size must be an integer",
        ),
        (
            {"lora_targets": {"type": "categorical", "choices": ["qkv", "qkvx"]}},
            r"lora_targets.choices\[1\]: 'qkvx' is not allowed; lora_targets must be "
            r"comma-separated names out of \['qkv', 'proj', 'fc1', 'fc2'\]",
        ),
        (
            {"dropout": {"type": "float", "low": 0.1, "high": 1.5}},
            r"dropout.high: 1.5 is not allowed; dropout must be in \[0, 1\)",
        ),
        (
            {"lora_r": {"type": "int", "low": 0, "high": 8}},
            r"lora_r.low: 0 is not allowed; lora_r must be an integer >= 1",
        ),
        (
            {"warmup_epochs": {"type": "int", "low": 0, "high": 4, "step": 0}},
            r"warmup_epochs.step: 0 is not allowed; a whole number > 0",
        ),
        (
            {"dropout": {"type": "float", "low": 0.1, "high": 0.5, "step": -0.1}},
            r"dropout.step: -0.1 is not allowed; a number > 0",
        ),
        (
            {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": "yes"}},
            r"learning_rate.log: 'yes' is not allowed; true or false",
        ),
        # Conditions that can never be met would silently never draw their entry.
        (
            {
                "lora_r": LORA_R,
                "warmup_epochs": {
                    "type": "int", "low": 0, "high": 2,
                    "condition": {"param": "lora_r", "values": [64]},
                },
            },
            r"warmup_epochs.condition.values: 64 is not allowed; lora_r never draws it; "
            r"it draws \[4, 8, 16, 32\]",
        ),
        (
            {
                "lora_r": LORA_R,
                "lora_alpha": {
                    "type": "categorical", "choices": [16],
                    "cases": [{"when": {"param": "lora_r", "values": ["16"]}, "choices": [32]}],
                },
            },
            r"lora_alpha.cases\[0\].when.values: '16' is not allowed; lora_r never draws it",
        ),
        (
            {
                "warmup_epochs": {"type": "int", "low": 0, "high": 3},
                "label_smoothing": {
                    "type": "float", "low": 0, "high": 0.2,
                    "condition": {"param": "warmup_epochs", "values": [5]},
                },
            },
            r"label_smoothing.condition.values: 5 is not allowed; warmup_epochs never draws it; "
            r"it draws integers 0-3",
        ),
        (
            {
                "dropout": {"type": "float", "low": 0.1, "high": 0.5},
                "lora_r": {**LORA_R, "condition": {"param": "dropout", "values": [0.2]}},
            },
            r"lora_r.condition.param: 'dropout' is not allowed; a float entry never equals",
        ),
    ],
)  # fmt: skip
def test_values_every_trial_would_fail_on_are_refused(entry, message):
    with pytest.raises(ConfigError, match=message):
        check_search_space(entry)


def test_a_condition_may_name_a_value_only_a_case_draws():
    space = {
        "lora_r": LORA_R,
        "lora_alpha": {
            "type": "categorical",
            "choices": [16],
            "cases": [{"when": {"param": "lora_r", "values": [32]}, "choices": [32, 64]}],
        },
        "warmup_epochs": {
            "type": "int",
            "low": 0,
            "high": 2,
            "condition": {"param": "lora_alpha", "values": [64]},
        },
    }
    check_search_space(space)  # lora_alpha draws 64 only under its case: still reachable


def test_lora_target_names_match_the_model():
    from retfound_hpo.core.space import LORA_TARGET_NAMES
    from retfound_hpo.model.adapters import LORA_TARGETS

    assert set(LORA_TARGETS) == set(LORA_TARGET_NAMES)


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


# One section per adaptation: each holds only what its adaptation can use.
LR = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
SECTIONS = {
    "lora": {"lora_r": LORA_R, "learning_rate": LR},
    "full": {"learning_rate": LR, "layer_decay": {"type": "float", "low": 0.5, "high": 0.9}},
    "linear_probe": {"learning_rate": LR},
}


@pytest.mark.parametrize("adaptation", ["lora", "full", "linear_probe"])
def test_each_adaptation_searches_its_own_section(adaptation):
    check_search_space(SECTIONS, adaptation)
    assert active_space(SECTIONS, adaptation) == SECTIONS[adaptation]
    flat = SECTIONS[adaptation]  # a flat space is model.adaptation's own
    check_search_space(flat, adaptation)
    assert active_space(flat, adaptation) is flat


@pytest.mark.parametrize(
    ("space", "adaptation", "message"),
    [
        (
            {**SECTIONS, "full": {"lora_r": LORA_R, "learning_rate": LR}},
            "lora",  # every section is checked, not only the active one
            r"hpo.search_space.full.lora_r: 'lora_r' is not allowed; model.adaptation full "
            r"trains every weight, no LoRA adapters; its hyperparameters: \['learning_rate'",
        ),
        (
            {"lora_alpha": {"type": "categorical", "choices": [16]}, "learning_rate": LR},
            "full",  # a flat space is the active adaptation's
            r"hpo.search_space.lora_alpha: 'lora_alpha' is not allowed; model.adaptation full",
        ),
        (
            {**SECTIONS, "linear_probe": {"layer_decay": {"type": "float", "low": 0.5, "high": 1}}},
            "linear_probe",
            r"linear_probe.layer_decay: 'layer_decay' is not allowed; model.adaptation "
            r"linear_probe trains only the head",
        ),
        (
            {**SECTIONS, "learning_rate": LR},
            "lora",
            r"hpo.search_space.learning_rate: 'learning_rate' is not allowed; a space in sections "
            r"per adaptation holds only \['lora', 'full', 'linear_probe'\]; put learning_rate "
            r"under hpo.search_space.lora",
        ),
        (
            {"lora": SECTIONS["lora"]},
            "full",
            r"hpo.search_space.full: None is not allowed; model.adaptation is full: give its "
            r"section \(sections: \['lora'\]\)",
        ),
        ({**SECTIONS, "full": {}}, "lora", r"hpo.search_space.full: \{\} is not allowed"),
    ],
)  # fmt: skip
def test_a_section_holds_only_what_its_adaptation_uses(space, adaptation, message):
    with pytest.raises(ConfigError, match=message):
        check_search_space(space, adaptation)


def test_numbers_written_as_text_are_read_in_every_section():
    space = {"full": {"learning_rate": {"type": "float", "low": "1e-05", "high": "1e-3"}}}
    assert normalize_search_space(space)["full"]["learning_rate"]["low"] == 1e-05

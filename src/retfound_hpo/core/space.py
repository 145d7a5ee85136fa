"""The search space as data: validation of `hpo.search_space` and of hyperparameter sets in it.

An entry is `categorical` (choices) or `int` / `float` (low, high, optional step and log). An
entry may depend on an earlier one in two ways:

    warmup_epochs: {type: int, low: 0, high: 3, condition: {param: lora_r, values: [16, 32]}}
        -> drawn only when lora_r is 16 or 32; otherwise the default is used
    lora_alpha: {type: categorical, choices: [16, 32],
                 cases: [{when: {param: lora_r, values: [16, 32]}, choices: [32, 64, 128]}]}
        -> the first matching case replaces choices/low/high/step/log; no match: the entry's own

The space may have one section per adaptation (`lora:`, `full:`, `linear_probe:`); the search
uses model.adaptation's. A flat space is model.adaptation's. Each section may only hold the
hyperparameters its adaptation uses (MODE_HPARAMS).
"""

from __future__ import annotations

import math
from typing import Any

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.recipes import ADAPTATIONS
from retfound_hpo.core.space_sections import EXCLUDED, WHY_NOT, is_sectioned, space_sections

# Short LoRA target names (model.LORA_TARGETS maps them to the ViT's modules).
LORA_TARGET_NAMES = ("qkv", "proj", "fc1", "fc2")


def _targets_ok(value: Any) -> bool:
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else []
    return bool(names) and all(n in LORA_TARGET_NAMES for n in names)


# Hyperparameters the objective knows how to use: (integer only?, rule for a value, the rule
# in words). A value outside its rule would fail every trial that draws it, so it is refused
# before any trial runs.
HPARAMS: dict[str, tuple[bool, Any, str]] = {
    "lora_r": (True, lambda v: v >= 1, "an integer >= 1"),
    "lora_alpha": (False, lambda v: v > 0, "a number > 0"),
    "learning_rate": (False, lambda v: v > 0, "a number > 0"),
    "batch_size": (True, lambda v: v >= 1, "an integer >= 1"),
    "dropout": (False, lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (False, lambda v: v >= 0, "a number >= 0"),
    "warmup_epochs": (True, lambda v: v >= 0, "an integer >= 0"),
    "lora_dropout": (False, lambda v: 0 <= v < 1, "in [0, 1)"),
    "label_smoothing": (False, lambda v: 0 <= v < 1, "in [0, 1)"),
    "lora_targets": (
        False,
        _targets_ok,
        f"comma-separated names out of {list(LORA_TARGET_NAMES)}, e.g. 'qkv,proj'",
    ),
    "layer_decay": (False, lambda v: 0 < v <= 1, "in (0, 1]"),
}
TUNABLE = tuple(HPARAMS)
TYPES = ("categorical", "int", "float")
RANGE_KEYS = {"low", "high", "step", "log"}
ALLOWED_KEYS = {"categorical": {"choices"}, "int": RANGE_KEYS, "float": RANGE_KEYS}


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def _as_number(value: Any) -> Any:
    """'1e-05' -> 1e-05: `dvc exp run -S` writes exponents that YAML 1.1 reads as text."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def normalize_search_space(space: Any) -> Any:
    """The space with numeric text in low/high/step turned into numbers (cases included), in
    every adaptation's section."""
    if not isinstance(space, dict):
        return space
    if is_sectioned(space):
        return {k: normalize_search_space(v) if k in ADAPTATIONS else v for k, v in space.items()}
    out = {}
    for name, spec in space.items():
        if isinstance(spec, dict):
            spec = {k: _as_number(v) if k in RANGE_KEYS - {"log"} else v for k, v in spec.items()}
            if isinstance(spec.get("cases"), list):
                spec["cases"] = [
                    {k: _as_number(v) if k in RANGE_KEYS - {"log"} else v for k, v in c.items()}
                    if isinstance(c, dict)
                    else c
                    for c in spec["cases"]
                ]
        out[name] = spec
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(key: str, name: str, value: Any) -> None:
    """A value `name` may take: of the right kind and within its rule (HPARAMS)."""
    integer, rule, allowed = HPARAMS[name]
    if name == "lora_targets":
        ok = rule(value)
    elif integer:
        ok = isinstance(value, int) and not isinstance(value, bool) and rule(value)
    else:
        ok = _is_number(value) and rule(value)
    if not ok:
        _fail(key, value, f"{name} must be {allowed}")


def _check_distribution(key: str, name: str, kind: str, spec: dict) -> None:
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            _fail(f"{key}.choices", choices, "give a non-empty list")
        for i, choice in enumerate(choices):
            _check_value(f"{key}.choices[{i}]", name, choice)
        return
    if name == "lora_targets":
        _fail(f"{key}.type", kind, "lora_targets takes categorical choices of names")
    if HPARAMS[name][0] and kind == "float":
        _fail(f"{key}.type", kind, f"{name} must be {HPARAMS[name][2]}: use int or categorical")
    low, high = spec.get("low"), spec.get("high")
    for bound, v in (("low", low), ("high", high)):
        if not _is_number(v):
            _fail(f"{key}.{bound}", v, "give a finite number")
        if kind == "int" and not isinstance(v, int):
            _fail(f"{key}.{bound}", v, "an int entry needs integer bounds")
    if low > high:
        _fail(f"{key}.low", low, f"must be <= high ({high})")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        _fail(f"{key}.log", log, "true or false")
    if log and low <= 0:
        _fail(f"{key}.low", low, "log scale needs low > 0")
    for bound, v in (("low", low), ("high", high)):
        _check_value(f"{key}.{bound}", name, v)
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            _fail(f"{key}.step", step, f"a {'whole ' if kind == 'int' else ''}number > 0")
        if log and step != 1:
            _fail(f"{key}.step", step, "step cannot be combined with log")


def _possible_values(spec: dict) -> list[Any] | tuple[float, float] | None:
    """What an entry can draw: its choices (over all cases), an int range, or None (float)."""
    dists = [spec, *({**spec, **case} for case in spec.get("cases") or [])]
    if spec["type"] == "categorical":
        return [c for d in dists for c in d["choices"]]
    if spec["type"] == "int":
        return min(d["low"] for d in dists), max(d["high"] for d in dists)
    return None


def _check_when(key: str, when: Any, earlier: dict[str, dict]) -> None:
    if not isinstance(when, dict) or set(when) != {"param", "values"}:
        _fail(key, when, "give {param: <earlier entry>, values: [...]}")
    if when["param"] not in earlier:
        _fail(f"{key}.param", when["param"], f"name an entry listed before it: {list(earlier)}")
    values = when["values"]
    if not isinstance(values, list) or not values:
        _fail(f"{key}.values", values, "give a non-empty list")
    # A value the parent can never draw makes the condition never met: a silent no-op.
    possible = _possible_values(earlier[when["param"]])
    parent = when["param"]
    if possible is None:
        _fail(f"{key}.param", parent, "a float entry never equals a listed value; use int or "
              "categorical for a parent")  # fmt: skip
    for v in values:
        if isinstance(possible, list):
            ok = any(v == c and type(v) is type(c) for c in possible)
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and possible[0] <= v <= possible[1]
        if not ok:
            shown = (
                possible if isinstance(possible, list) else f"integers {possible[0]}-{possible[1]}"
            )
            _fail(f"{key}.values", v, f"{parent} never draws it; it draws {shown}")


def check_search_space(space: Any, adaptation: str = "lora") -> None:
    """Validate every entry of every section; the first problem raises ConfigError naming its
    key."""
    for prefix, (mode, section) in space_sections(space, adaptation).items():
        _check_section(section, prefix, mode)


def _check_section(space: Any, prefix: str, mode: str) -> None:
    if not isinstance(space, dict) or not space:
        _fail(prefix, space, "define at least one hyperparameter")
    earlier: dict[str, dict] = {}
    for name, spec in space.items():
        key = f"{prefix}.{name}"
        if name not in TUNABLE:
            _fail(key, name, f"known hyperparameters: {list(TUNABLE)}")
        if name in EXCLUDED[mode]:
            allowed = [n for n in TUNABLE if n not in EXCLUDED[mode]]
            _fail(
                key,
                name,
                f"model.adaptation {mode} {WHY_NOT[mode]}; its hyperparameters: {allowed}",
            )
        if not isinstance(spec, dict):
            _fail(key, spec, "expected a mapping with a 'type'")
        kind = spec.get("type")
        if kind not in TYPES:
            _fail(f"{key}.type", kind, f"choose one of {list(TYPES)}")
        extra = sorted(set(spec) - ALLOWED_KEYS[kind] - {"type", "condition", "cases"})
        if extra:
            _fail(
                f"{key}.{extra[0]}",
                extra[0],
                f"allowed keys for {kind}: {sorted(ALLOWED_KEYS[kind] | {'condition', 'cases'})}",
            )
        _check_distribution(key, name, kind, spec)
        if "condition" in spec:
            _check_when(f"{key}.condition", spec["condition"], earlier)
        cases = spec.get("cases") or []
        if not isinstance(cases, list):
            _fail(f"{key}.cases", cases, "give a list of {when: {param, values}, ...}")
        for i, case in enumerate(cases):
            case_key = f"{key}.cases[{i}]"
            if not isinstance(case, dict) or "when" not in case:
                _fail(case_key, case, "give {when: {param, values}, <distribution keys>}")
            _check_when(f"{case_key}.when", case["when"], earlier)
            bad = sorted(set(case) - ALLOWED_KEYS[kind] - {"when"})
            if bad:
                _fail(f"{case_key}.{bad[0]}", bad[0], f"allowed: {sorted(ALLOWED_KEYS[kind])}")
            _check_distribution(case_key, name, kind, {**spec, **case})
        earlier[name] = spec


def _in_distribution(dist: dict, value: Any) -> bool:
    if dist["type"] == "categorical":
        return any(value == c and type(value) is type(c) for c in dist["choices"])
    if dist["type"] == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if not _is_number(value) or not dist["low"] <= value <= dist["high"]:
        return False
    step = dist.get("step")
    steps = (value - dist["low"]) / step if step else 0  # on the grid low, low + step, ...
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def fixed_params(space: dict[str, dict], values: Any, key: str) -> dict[str, Any]:
    """Optuna's parameters for one hyperparameter set given by entry name (`hpo.enqueue_trials`),
    checked against the space: each value must be one a trial could draw. Entries left out are
    drawn by the sampler."""
    if not isinstance(values, dict) or not values:
        _fail(key, values, "give a mapping of search-space entries to values")
    unknown = [name for name in values if name not in space]
    if unknown:
        _fail(f"{key}.{unknown[0]}", unknown[0], f"not in hpo.search_space: {list(space)}")
    drawn: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for name, spec in space.items():
        if name not in values:
            continue
        value = _as_number(values[name]) if name != "lora_targets" else values[name]
        parents = [spec["condition"]] if "condition" in spec else []
        parents += [case["when"] for case in spec.get("cases") or []]
        for when in parents:
            if when["param"] not in values:
                _fail(f"{key}.{name}", value, f"{name} depends on {when['param']}: give it too")
        if "condition" in spec and not matches(spec["condition"], drawn):
            cond = spec["condition"]
            _fail(f"{key}.{name}", value, f"drawn only when {cond['param']} is in {cond['values']}")
        dist, optuna_name = applicable(name, spec, drawn)
        if not _in_distribution(dist, value):
            shown = (
                dist["choices"] if dist["type"] == "categorical" else (dist["low"], dist["high"])
            )
            _fail(f"{key}.{name}", value, f"a trial draws {name} from {shown}")
        drawn[name] = fixed[optuna_name] = value
    return fixed


def applicable(name: str, spec: dict, drawn: dict[str, Any]) -> tuple[dict, str]:
    """The distribution an entry draws from given earlier draws, and its name in Optuna."""
    for case in spec.get("cases") or []:
        if matches(case["when"], drawn):
            when = case["when"]
            # Optuna needs one fixed distribution per name: a case gets a name of its own.
            values = "/".join(str(v) for v in when["values"])
            return {**spec, **case}, f"{name}|{when['param']}={values}"
    return spec, name


def matches(when: dict, drawn: dict[str, Any]) -> bool:
    return when["param"] in drawn and drawn[when["param"]] in when["values"]

"""Drawing one trial's hyperparameters from the search space (validated in core.space)."""

from __future__ import annotations

from typing import Any

import optuna

from retfound_hpo.core.space import applicable, matches


def suggest_hparams(trial: optuna.Trial, space: dict[str, dict]) -> dict[str, Any]:
    """Draw one value per applicable entry, in order; conditions look at earlier draws."""
    drawn: dict[str, Any] = {}
    for name, spec in space.items():
        if "condition" in spec and not matches(spec["condition"], drawn):
            continue  # not applicable: the default value is used
        dist, optuna_name = applicable(name, spec, drawn)
        drawn[name] = _suggest(trial, optuna_name, dist)
    return drawn


def _suggest(trial: optuna.Trial, name: str, spec: dict) -> Any:
    if spec["type"] == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    if spec["type"] == "int":
        return trial.suggest_int(
            name, spec["low"], spec["high"], step=spec.get("step") or 1, log=spec.get("log", False)
        )
    return trial.suggest_float(
        name, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False)
    )

"""The search space in sections, one per adaptation: which section a search draws from, and
which hyperparameters each adaptation can use.

    search_space:
      lora: {lora_r: ..., lora_alpha: ..., learning_rate: ...}
      full: {learning_rate: ..., layer_decay: ...}
      linear_probe: {learning_rate: ...}

A flat space (no section names) is model.adaptation's.
"""

from __future__ import annotations

from typing import Any

from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.recipes import ADAPTATIONS

LORA_HPARAMS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")
# What each adaptation cannot use: LoRA's own without LoRA; layer decay where only the head
# trains (it leaves the head at the full learning rate, so it would move nothing).
EXCLUDED = {
    "lora": (),
    "full": LORA_HPARAMS,
    "linear_probe": (*LORA_HPARAMS, "layer_decay"),
}
WHY_NOT = {
    "full": "trains every weight, no LoRA adapters",
    "linear_probe": "trains only the head on a frozen backbone (no LoRA, no layer decay)",
}


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def is_sectioned(space: Any) -> bool:
    return isinstance(space, dict) and any(k in ADAPTATIONS for k in space)


def space_sections(space: Any, adaptation: str = "lora") -> dict[str, tuple[str, Any]]:
    """{key prefix: (adaptation, its space)}: each adaptation's section, or a flat space as
    model.adaptation's."""
    if not isinstance(space, dict) or not space:
        _fail("hpo.search_space", space, "define at least one hyperparameter")
    if not is_sectioned(space):
        return {"hpo.search_space": (adaptation, space)}
    stray = [k for k in space if k not in ADAPTATIONS]
    if stray:
        _fail(
            f"hpo.search_space.{stray[0]}",
            stray[0],
            f"a space in sections per adaptation holds only {list(ADAPTATIONS)}; put "
            f"{stray[0]} under hpo.search_space.{adaptation}",
        )
    if adaptation not in space:
        _fail(
            f"hpo.search_space.{adaptation}",
            None,
            f"model.adaptation is {adaptation}: give its section (sections: {list(space)})",
        )
    return {f"hpo.search_space.{mode}": (mode, spec) for mode, spec in space.items()}


def active_space(space: dict, adaptation: str) -> dict[str, dict]:
    """The space the search of `adaptation` draws from (a flat space is its own)."""
    return space[adaptation] if is_sectioned(space) else space

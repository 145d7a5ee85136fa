"""Reading params.yaml into validated sections, and writing them back."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from retfound_hpo.core.checks import check_values
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import Params
from retfound_hpo.core.recipes import fill_defaults, log_overrides
from retfound_hpo.core.space import normalize_search_space
from retfound_hpo.core.space_sections import active_space
from retfound_hpo.core.typed import build, yaml_problem


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError naming the first bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_problem(err)}") from None
    # Null (or absent) recipe values take model.arch's and model.adaptation's (core.recipes).
    params = build(Params, fill_defaults(raw), "")
    space = normalize_search_space(params.hpo.search_space)
    params = dataclasses.replace(params, hpo=dataclasses.replace(params.hpo, search_space=space))
    check_values(params)
    # From here on the search space is model.adaptation's section.
    space = active_space(space, params.model.adaptation)
    params = dataclasses.replace(params, hpo=dataclasses.replace(params.hpo, search_space=space))
    log_overrides(params.model.arch, params.model.input_size, params.model.normalization)
    return params


def dump_params(params: Params, path: str | Path) -> None:
    """Write `params` as a params.yaml that load_params reads back to the same values."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    Path(path).write_text(yaml.safe_dump(plain(dataclasses.asdict(params)), sort_keys=False))

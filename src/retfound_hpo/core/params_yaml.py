"""Reading params.yaml into validated sections, and writing them back."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from retfound_hpo.core.checks import check_values
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import Params
from retfound_hpo.core.space import normalize_search_space
from retfound_hpo.core.typed import build, yaml_problem


class _Loader(yaml.SafeLoader):
    """YAML as DVC reads it (1.2): `10:00` is text, where YAML 1.1 reads the number 600."""


_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_Loader.yaml_implicit_resolvers = {
    first: [("tag:yaml.org,2002:str", _SEXAGESIMAL), *resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError naming the first bad key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_problem(err)}") from None
    params = build(Params, raw, "")
    space = normalize_search_space(params.hpo.search_space)
    params = dataclasses.replace(params, hpo=dataclasses.replace(params.hpo, search_space=space))
    check_values(params)
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

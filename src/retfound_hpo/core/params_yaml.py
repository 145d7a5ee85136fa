"""Reading params.yaml into validated sections, and writing them back."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from retfound_hpo.core.checks import check_values
from retfound_hpo.core.cli import run_stage
from retfound_hpo.core.errors import ConfigError
from retfound_hpo.core.params import Params
from retfound_hpo.core.paths import check_paths
from retfound_hpo.core.recipes import fill_defaults, log_overrides
from retfound_hpo.core.space import normalize_search_space
from retfound_hpo.core.space_sections import active_space
from retfound_hpo.core.typed import build, yaml_problem


class _Loader(yaml.SafeLoader):
    """YAML as DVC reads it (1.2): `10:00` is text, where YAML 1.1 reads the number 600."""


_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_Loader.yaml_implicit_resolvers = {
    first: [("tag:yaml.org,2002:str", _SEXAGESIMAL), *resolvers]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_params(
    path: str | Path = "params.yaml", root: str | Path | None = None, check_folders: bool = True
) -> Params:
    """Read and validate params.yaml; raise ConfigError naming the first bad key. `root` is the
    project folder its paths are relative to (default: the file's folder); `check_folders`
    False skips core.paths' checks, for a copy of params that a stage already checked."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder; give the params file (params.yaml) in it")
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {yaml_problem(err)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); params.yaml is YAML") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    # Null (or absent) recipe values take model.arch's and model.adaptation's (core.recipes).
    params = build(Params, fill_defaults(raw), "")
    space = normalize_search_space(params.hpo.search_space)
    params = dataclasses.replace(params, hpo=dataclasses.replace(params.hpo, search_space=space))
    check_values(params)
    if check_folders:
        check_paths(params, path.resolve().parent if root is None else root)
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


def main(argv: list[str] | None = None) -> None:
    """Console command retfound-check: validate a params file, as every stage does first."""
    parser = argparse.ArgumentParser(
        prog="retfound-check",
        description="Check params.yaml (every key known, every value allowed, paths safe) "
        "without running anything; a problem is one line naming the key, exit code 2.",
    )
    parser.add_argument("params", nargs="?", default="params.yaml", help="default: params.yaml")
    args = parser.parse_args(argv)

    def check() -> None:
        load_params(args.params)
        print(f"{args.params}: every key known, every value allowed")

    run_stage(check)


if __name__ == "__main__":
    main()

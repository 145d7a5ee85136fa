"""Dataclasses from YAML mappings: fields type-checked, unknown keys refused, one-line errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import yaml

from retfound_hpo.core.errors import ConfigError


def yaml_problem(err: yaml.YAMLError) -> str:
    """'line 5, column 1: found character '\\t' ...' from a YAML error, in one line."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    tab = "\t" in problem or "'\\t'" in problem  # PyYAML shows the tab escaped
    hint = "; indent with spaces, not tabs" if tab else ""
    return f"{where}not valid YAML ({problem}){hint}"


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a dict, type-checking each field; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{key}: unknown key; allowed keys here: {', '.join(sorted(names))}")
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ConfigError(
            f"{prefix}{missing[0]}: missing; required keys here: {', '.join(required)}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in raw.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):  # Optional[...]
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin is tuple:
        if isinstance(value, str):  # "qkv,proj" is accepted for lists of names
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _is_number(value):
        return float(value)  # `dvc exp run -S x=1e-5` writes 1e-05, which YAML 1.1 reads as text
    if hint in (int, str, bool) and type(value) is hint:
        return value
    expected = "true or false" if hint is bool else hint.__name__
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

"""Markdown for the summary report: tables, cells and values as the report shows them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import optuna
from optuna.trial import FrozenTrial


def param_names(space: dict[str, dict], trials: Sequence[FrozenTrial]) -> list[str]:
    """Search-space order first, then any parameter the space does not list (plain names)."""
    seen = {p for t in trials for p in plain(t.params)}
    return [p for p in space if p in seen] + sorted(seen - set(space))


def plain(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna names of conditional parameters ("lora_alpha|lora_r=16/32") as plain names."""
    return {name.split("|")[0]: value for name, value in params.items()}


def direction(direction: optuna.study.StudyDirection) -> str:
    return "maximized" if direction == optuna.study.StudyDirection.MAXIMIZE else "minimized"


def count(value: float) -> Any:
    """A parameter count is stored as a float objective value; show it as an integer."""
    return int(value) if float(value).is_integer() else value


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> Iterable[str]:
    yield "| " + " | ".join(cell(h) for h in header) + " |"
    yield "|" + "---|" * len(header)
    for row in rows:
        yield "| " + " | ".join(cell(v) for v in row) + " |"
    yield ""


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def hms(delta: timedelta) -> str:
    return str(timedelta(seconds=round(delta.total_seconds())))

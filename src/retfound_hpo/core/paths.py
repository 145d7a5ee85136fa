"""Params that become paths: names are plain file names, output folders stay inside the project.

Stages remove and replace their own output folders (a prepared set, the delivered model), so a
name like `../../models` or a folder like `models` would delete what is not theirs. Before any
work: every name that becomes a path is a plain name; every output folder is a relative path
inside the project, outside its code, and neither holds nor overlaps another output folder or
an input (the checkpoint, a labels file, an image folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from retfound_hpo.core.errors import ConfigError

if TYPE_CHECKING:
    from retfound_hpo.core.params import Params

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# The project's own files: no stage may write into them.
PROJECT_FILES = ("src", "stages", "tests", "bench", "scripts", "assets", ".git", ".dvc", ".ci")
# Prepared sets of prepare-split itself: an evaluation dataset must not take their names.
RESERVED_SETS = ("train", "val", "test", ".unsplit")
# What prepare-split writes besides its folders (stages/prepare_split.py).
SUMMARY_DIR = "results/data"


def check_name(key: str, value: str, what: str) -> None:
    """`value` becomes a file or folder name: letters, digits, '_', '.', '-', no separators."""
    if not PLAIN_NAME.fullmatch(value) or value in (".", ".."):
        raise ConfigError(
            f"{key}: {value!r} is not allowed; {what} becomes a folder name: use letters, digits, "
            "'_', '.' and '-' (starting with a letter or digit), no '/'"
        )


def _parts(value: str, root: Path) -> tuple[str, ...]:
    """A path of params as parts relative to the project root (outside it: starting '..')."""
    path = Path(os.path.normpath(root / Path(value).expanduser()))
    return Path(os.path.relpath(path, root)).parts if path != root else ()


def check_output_dir(key: str, value: str, root: Path) -> tuple[str, ...]:
    """An output folder: inside the project, not the project itself nor its code; its parts."""
    parts = _parts(value, root)
    if not parts:
        problem = "the project folder itself"
    elif parts[0] == "..":
        problem = f"outside the project ({root})"
    elif parts[0] in PROJECT_FILES:
        problem = f"inside the project's own {parts[0]}/"
    else:
        return parts
    raise ConfigError(
        f"{key}: {value!r} is not allowed; {problem}: give a folder such as 'results/x'"
    )


def _inside(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    return inner[: len(outer)] == outer


def check_paths(p: Params, root: str | Path = ".") -> None:
    """Names and folders of `p` that become paths (see the module docstring); `root` is the
    project folder (where params.yaml is, and where the stages run)."""
    root = Path(os.path.abspath(root))
    check_name("hpo.study_name", p.hpo.study_name, "the study name")
    if "@" in p.hpo.study_name:  # `<name>@<id>` is how a study of other inputs is kept aside
        raise ConfigError(
            f"hpo.study_name: {p.hpo.study_name!r} is not allowed; '@' marks kept-aside studies"
        )
    names = [ds.name for ds in p.evaluate.datasets]
    for i, name in enumerate(names):
        check_name(f"evaluate.datasets[{i}].name", name, "a dataset name")
        if name in RESERVED_SETS or names.index(name) != i:
            raise ConfigError(
                f"evaluate.datasets[{i}].name: {name!r} is not allowed; names must be unique "
                f"and not {list(RESERVED_SETS[:3])} (the prepared splits, evaluated too)"
            )
    outputs = _output_dirs(p)
    defaults = _output_dirs(type(p)())
    parts = {key: check_output_dir(key, value, root) for key, value in outputs.items()}
    parts["prepare-split's summary (results/data)"] = _parts(SUMMARY_DIR, root)
    # The demo's labels and images are prepare-split's own output when the demo is on.
    demo_inputs = {"data.csv": p.data.csv, "data.images": p.data.images}
    for i, ds in enumerate(p.evaluate.datasets):
        demo_inputs |= {f"evaluate.datasets[{i}].csv": ds.csv}
        demo_inputs |= {f"evaluate.datasets[{i}].images": ds.images}
    inputs = {"model.checkpoint": p.model.checkpoint, **demo_inputs}
    for in_key, value in inputs.items():
        path = _parts(value, root)
        for out_key, out in parts.items():
            if out_key.startswith("prepare-split"):
                continue
            made_by_demo = (
                p.data.demo.enabled and out_key == "data.demo.out_dir" and in_key in demo_inputs
            )
            if _inside(path, out) and not made_by_demo:
                raise ConfigError(
                    f"{out_key}: {outputs[out_key]!r} is not allowed; it holds {in_key} "
                    f"({value}), which its stage would replace: choose another folder"
                )
    keys = list(parts)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if _inside(parts[a], parts[b]) or _inside(parts[b], parts[a]):
                if outputs.get(b) != defaults.get(b) and outputs.get(a) == defaults.get(a):
                    a, b = b, a  # blame the folder that was moved, not the default one
                raise ConfigError(
                    f"{a}: {outputs.get(a)!r} is not allowed; it overlaps {b} "
                    f"({'/'.join(parts[b])}): each stage's outputs need a folder of their own"
                )


def _output_dirs(p: Params) -> dict[str, str]:
    """Each output folder a params key names."""
    return {
        "data.demo.out_dir": p.data.demo.out_dir,
        "data.prepared_dir": p.data.prepared_dir,
        "data.splits_dir": p.data.splits_dir,
        "hpo.output_dir": p.hpo.output_dir,
        "train_best.output_dir": p.train_best.output_dir,
        "train_best.seeds_dir": p.train_best.seeds_dir,
        "train_best.results_dir": p.train_best.results_dir,
        "evaluate.output_dir": p.evaluate.output_dir,
    }

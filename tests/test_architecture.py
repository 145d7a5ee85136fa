"""The package's shape, read from its source: imports run one way, no circles, small modules, and
each DVC stage depends on exactly the code it runs, so that a change reruns only those stages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SRC = REPO / "src"
PACKAGE = "retfound_hpo"
# What each subpackage may import besides itself: stages -> search | evaluation | reporting ->
# training -> data | model | metrics -> core. Reporting and evaluation are imported by no one.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "model": {"core"},
    "metrics": {"core"},
    "training": {"core", "data", "model", "metrics"},
    "search": {"core", "data", "model", "metrics", "training"},
    "reporting": {"core"},
    "evaluation": {"core", "data", "model", "metrics", "training"},
}
MAX_LINES = 300
# The one place that holds the whole Params below the stage scripts: the search's worker entry
# point (it starts worker processes with the exact params the stage validated).
PARAMS_HOLDERS = {
    "retfound_hpo.search.workers",
    "retfound_hpo.core.params_yaml",  # reads and writes the file
    "retfound_hpo.core.checks",  # validates the file, section against section
    "retfound_hpo.core.paths",  # ... and the paths its sections name, against each other
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def runs_code(path: Path) -> bool:
    """Whether importing the file runs anything: an __init__.py that holds only its docstring
    does not, so no stage needs to depend on it."""
    body = ast.parse(path.read_text()).body
    return path.name != "__init__.py" or any(
        not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body
    )


CODE = {name: path for name, path in MODULES.items() if runs_code(path)}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path) -> set[str]:
    """Package modules a file imports, anywhere in it (functions included; `if TYPE_CHECKING`
    blocks excluded: they never run). `from a.b import c` is module a.b.c when that is a
    module, else a.b; importing a module runs its packages' __init__ too."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if module_path(f"{node.module}.{a.name}") else node.module
                for a in node.names
            ]
        else:
            continue
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in found if m in MODULES}


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def closure(names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH.get(name, ()))
    return seen


def code_of(script: Path) -> set[Path]:
    """Every package file a stage script runs: its imports, transitively."""
    return {CODE[m] for m in closure(imports_of(script)) if m in CODE}


def covers(dep: str, path: Path) -> bool:
    dep_path = (REPO / dep).resolve()
    return path == dep_path or dep_path in path.parents


def needed_deps(files: set[Path]) -> list[str]:
    """The shortest dep list that names exactly `files`: a folder where every .py file in it
    is used, else the files themselves."""
    out, done = [], set()
    for folder in sorted({p.parent for p in CODE.values()}, key=lambda f: len(f.parts)):
        if any(d in folder.parents or d == folder for d in done):
            continue
        inside = {p for p in CODE.values() if folder in p.parents}
        if inside and inside <= files:
            done.add(folder)
            out.append(folder.relative_to(REPO).as_posix())
    for path in sorted(files):
        if not any(d in path.parents for d in done):
            out.append(path.relative_to(REPO).as_posix())
    return sorted(out)


def deps_problems(script: Path, deps: list[str]) -> list[str]:
    """What is wrong with a stage's code deps: code it runs that no dep covers, and package
    deps that cover code it does not run (an edit there would rerun it for nothing)."""
    files = code_of(script)
    code_deps = [d for d in deps if (REPO / d).resolve().is_relative_to(SRC / PACKAGE)]
    problems = [
        f"runs {p.relative_to(REPO)} but no dep covers it"
        for p in sorted(files)
        if not any(covers(d, p) for d in code_deps)
    ]
    for dep in code_deps:
        unused = [p for p in CODE.values() if covers(dep, p) and p not in files]
        if unused:
            problems.append(f"dep {dep} covers {unused[0].relative_to(REPO)}, which it never runs")
    if problems:
        problems.append(f"its package deps should be: {needed_deps(files)}")
    return problems


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(stages()))
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    spec = stages()[stage]
    script = REPO / spec["cmd"].split()[-1]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    assert spec["cmd"].split()[-1] in deps, f"{stage}: its script is not a dep"
    assert deps_problems(script, deps) == [], stage


def test_the_deps_check_fails_for_a_stage_that_imports_more_than_it_lists(tmp_path):
    """A made-up stage that imports the report code while listing only core: refused, with the
    dep list it needs; with that list it passes."""
    script = tmp_path / "made_up_stage.py"
    script.write_text(
        "from retfound_hpo.core.cli import run_stage\n"
        "from retfound_hpo.reporting.report import write_report\n"
    )
    problems = deps_problems(script, ["src/retfound_hpo/core"])
    assert any("retfound_hpo/reporting/report.py but no dep covers it" in p for p in problems)
    needed = needed_deps(code_of(script))
    assert "src/retfound_hpo/reporting" in needed
    assert deps_problems(script, needed) == []
    # Listing too much is refused too: the whole package would rerun the stage for any edit.
    assert any("which it never runs" in p for p in deps_problems(script, ["src/retfound_hpo"]))


def test_no_stage_lists_the_whole_package():
    for name, spec in stages().items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
        assert not any(d.rstrip("/") in ("src", "src/retfound_hpo") for d in deps), name


def test_report_and_evaluation_code_is_their_stage_alone():
    """Editing a plot or an evaluation module never reruns the search or train-best."""
    runs = {
        name: {p.relative_to(SRC / PACKAGE).parts[0] for p in code_of(REPO / s["cmd"].split()[-1])}
        for name, s in stages().items()
    }
    assert {n for n, parts in runs.items() if "reporting" in parts} == {"export-report"}
    assert {n for n, parts in runs.items() if "evaluation" in parts} == {"evaluate-cross-dataset"}
    assert "training" not in runs["prepare-split"]


def test_imports_run_one_way():
    wrong = []
    for name, imported in GRAPH.items():
        parts = name.split(".")
        if len(parts) < 3:
            continue
        own = parts[1]
        for other in imported:
            theirs = other.split(".")[1] if other.count(".") else None
            if theirs and theirs != own and theirs not in ALLOWED[own]:
                wrong.append(f"{name} imports {other}")
    assert wrong == []


def test_no_import_circles():
    circles = sorted(m for m in GRAPH if m in closure(GRAPH[m]))
    assert circles == [], f"modules that import themselves through others: {circles}"


def test_modules_are_small_and_say_what_they_own():
    for name, path in MODULES.items():
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{name}: {lines} lines (at most {MAX_LINES})"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name}: no module docstring"


def test_only_entry_points_take_the_whole_params():
    """Below the stage scripts, functions take the section or the values they use."""
    takers = []
    for name, path in MODULES.items():
        if name in PARAMS_HOLDERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
                for arg in args:
                    if arg.annotation is not None and ast.unparse(arg.annotation) == "Params":
                        takers.append(f"{name}.{node.name}({arg.arg})")
    assert takers == []

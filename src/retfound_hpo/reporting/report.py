"""Stage export-report: the study as summary_report.md plus plots/*.png and plots/*.html."""

from __future__ import annotations

import logging
import shutil
import statistics
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from retfound_hpo.core.files import write_text_atomic
from retfound_hpo.reporting.markdown import (
    count,
    direction,
    fmt,
    hms,
    param_names,
    plain,
    table,
)
from retfound_hpo.reporting.plan import MIN_FIT_TRIALS
from retfound_hpo.reporting.plots import Plot, render_plots

log = logging.getLogger(__name__)

REPORT_NAME = "summary_report.md"
TOP_K = 10
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
PARAMS_OBJECTIVE = "trainable_params"  # the second objective of a multi-objective study
# Too big for a table cell: everything the trial used, and its per-epoch learning curve (which
# trials.csv, the intermediate-values plot and the trial's artifacts show).
HIDDEN_ATTRS = ("hparams", "history")


def write_report(
    study: optuna.Study,
    out_dir: Path,
    search_space: dict[str, dict],
    objective_name: str = "best_val_acc",
    num_epochs: int | None = None,
    png_backend: str = "auto",
    storage_url: str | None = None,
    metric: str | None = None,
) -> Path:
    """Write out_dir/summary_report.md and out_dir/plots/*.png + *.html; return the report path.

    png_backend: "auto" (kaleido if Chrome/Chromium is installed, else matplotlib), "plotly"
    or "matplotlib". storage_url, when given, is shown with the optuna-dashboard command.
    metric (hpo.metric), when given, lets the fitted plots include pruned trials at their best
    value before pruning (the trial attribute `val_<metric>`) when too few trials completed.
    A multi-objective study has (objective_name, trainable parameter count) as its values: the
    report adds its Pareto front, and ranks trials by the first objective.
    """
    if len(study.directions) > 2:
        raise ValueError("write_report handles single- or two-objective studies only")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Leftovers of a run that was killed before it could clean up (one stage runs at a time).
    for leftover in out_dir.glob(".plots.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    # Plots go to a fresh folder that replaces plots/ only once everything is drawn: an
    # interrupted run leaves the previous outputs whole, and no stale plot survives a rerun.
    staging = out_dir / f".plots.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        value_attr = f"val_{metric}" if metric else None
        plots, backend = render_plots(study, staging, objective_name, png_backend, value_attr)
        text = "\n".join(
            _sections(study, search_space, objective_name, num_epochs, storage_url, plots, backend)
        )
        _replace_dir(staging, out_dir / "plots")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    path = out_dir / REPORT_NAME
    write_text_atomic(path, text)
    log.info("wrote %s", path)
    return path


def _replace_dir(new: Path, final: Path) -> None:
    old = new.with_suffix(".old.tmp")
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _sections(
    study: optuna.Study,
    space: dict[str, dict],
    objective: str,
    num_epochs: int | None,
    storage_url: str | None,
    plots: list[Plot],
    backend: str,
) -> Iterable[str]:
    """The report's Markdown, a line (or block) at a time."""
    trials = study.get_trials(deepcopy=False)
    multi = len(study.directions) > 1
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    yield f"# Hyperparameter search report: {study.study_name}\n"
    yield f"- Study: `{study.study_name}`"
    yield f"- Storage: `{storage_url}`" if storage_url else "- Storage: not given"
    if multi:
        words = [direction(d) for d in study.directions]
        yield (
            f"- Objectives (multi-objective): `{objective}`, {words[0]}; "
            f"`{PARAMS_OBJECTIVE}`, {words[1]}\n"
        )
    else:
        yield f"- Objective: `{objective}`, {direction(study.directions[0])}\n"

    yield "## Study statistics\n"
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    shown = list(STATES) + [s for s in TrialState if s not in STATES and counts[s]]
    rows = [[s.name, counts[s]] for s in shown] + [["**Total**", len(trials)]]
    yield from table(["State", "Trials"], rows)

    sign = -1 if maximize else 1
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: (sign * t.values[0], t.number),
    )
    best = complete[0] if complete else None
    if multi:
        # Best metric first; among equal metrics the smaller model, then the earlier trial.
        pareto = sorted(
            study.best_trials, key=lambda t: (sign * t.values[0], t.values[1], t.number)
        )
        best = pareto[0] if pareto else None
        yield from _pareto(pareto, space, objective)
    yield from _best_and_top(best, complete, space, objective, multi)

    yield "## Search space\n"
    keys = list(dict.fromkeys(k for spec in space.values() for k in spec))
    rows = [[name, *(fmt(spec.get(k)) for k in keys)] for name, spec in space.items()]
    yield from table(["Parameter", *keys], rows)

    yield from _time_spent(trials)
    yield from _epochs_saved(trials, num_epochs)

    failed = [t for t in trials if "fail_reason" in t.user_attrs]
    if failed:
        yield "## Failed and diverged trials\n"
        rows = [[t.number, t.state.name, t.user_attrs["fail_reason"]] for t in failed]
        yield from table(["Trial", "State", "Reason"], rows)

    if storage_url:
        yield "## Open the study interactively\n"
        yield f"```bash\noptuna-dashboard {storage_url}\n```\n"

    yield "## Plots\n"
    yield f"PNG backend: {backend}. Each plot is also an interactive HTML file (works offline).\n"
    for plot in plots:
        links = f"[PNG](plots/{plot.name}.png) · [interactive HTML](plots/{plot.name}.html)"
        yield f"### {plot.title}\n"
        if plot.basis:
            yield f"Rests on {plot.basis}.\n"
        if plot.unavailable:
            yield f"Not available: {plot.unavailable} ({links})\n"
        elif plot.main:
            yield f"![{plot.title}](plots/{plot.name}.png)\n\n{links}\n"
        else:
            yield f"{links}\n"


def _pareto(pareto: list[FrozenTrial], space: dict[str, dict], objective: str) -> Iterable[str]:
    """The Pareto-optimal trials: no other trial is at least as good in both objectives."""
    yield "## Pareto front\n"
    if not pareto:
        yield "No completed trials yet: no Pareto front.\n"
        return
    yield (
        f"{len(pareto)} Pareto-optimal trial(s) trading `{objective}` against "
        f"`{PARAMS_OBJECTIVE}`, best `{objective}` first.\n"
    )
    names = param_names(space, pareto)
    rows = [
        [t.number, fmt(t.values[0]), fmt(count(t.values[1]))]
        + [fmt(plain(t.params).get(p)) for p in names]
        for t in pareto
    ]
    yield from table(["Trial", objective, PARAMS_OBJECTIVE, *names], rows)


def _best_and_top(
    best: FrozenTrial | None,
    complete: list[FrozenTrial],
    space: dict[str, dict],
    objective: str,
    multi: bool,
) -> Iterable[str]:
    """Best trial in full, then the top-K table (by the first objective) and its spread."""
    yield "## Best trial\n"
    if best is None:
        yield "No completed trials yet: no best trial, top-10 table or value statistics.\n"
        return
    yield f"- Trial: {best.number}"
    if multi:
        yield f"- {objective}: {fmt(best.values[0])}"
        yield f"- {PARAMS_OBJECTIVE}: {fmt(count(best.values[1]))}"
        yield f"- Chosen from the Pareto front: best {objective}, then fewest parameters\n"
    else:
        yield f"- {objective}: {fmt(best.values[0])}\n"
    params = [[k, fmt(v)] for k, v in plain(best.params).items()]
    yield from table(["Parameter", "Value"], params)
    attrs = [[k, fmt(v)] for k, v in sorted(best.user_attrs.items()) if k not in HIDDEN_ATTRS]
    yield from table(["User attribute", "Value"], attrs)

    top = complete[:TOP_K]
    names = param_names(space, top)
    extra = [PARAMS_OBJECTIVE] if multi else []
    yield f"## Top {len(top)} completed trials\n"
    if len(complete) < MIN_FIT_TRIALS:
        yield (
            f"Only {len(complete)} trial(s) completed: this ranking, its mean and its spread rest "
            f"on {len(complete)} value(s). Pruned trials stopped early; their best values before "
            "stopping are in trials.csv (`objective`), not here.\n"
        )
    rows = [
        [rank, t.number, fmt(t.values[0])]
        + ([fmt(count(t.values[1]))] if multi else [])
        + [fmt(plain(t.params).get(p)) for p in names]
        + [fmt(t.user_attrs.get("epochs_run"))]
        for rank, t in enumerate(top, 1)
    ]
    yield from table(["Rank", "Trial", objective, *extra, *names, "epochs_run"], rows)
    values = [t.values[0] for t in top]
    std = fmt(statistics.stdev(values)) if len(values) > 1 else "n/a (1 trial)"
    yield f"- Mean {objective} of the top {len(top)}: {fmt(statistics.mean(values))}"
    yield f"- Standard deviation (sample, n − 1): {std}\n"


def _time_spent(trials: Sequence[FrozenTrial]) -> Iterable[str]:
    durations = [t.duration for t in trials if t.duration is not None]
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]  # pruned too
    yield "## Time spent\n"
    yield (
        f"- Sum of trial durations: {hms(sum(durations, timedelta()))} "
        f"({len(durations)} finished trials)"
    )
    wall = hms(max(ends) - min(starts)) if ends else "n/a (no finished trial)"
    yield f"- Wall clock, first trial start → last trial end: {wall}\n"


def _epochs_saved(trials: Sequence[FrozenTrial], num_epochs: int | None) -> Iterable[str]:
    """Epochs run against the budget had every finished trial run all num_epochs."""
    yield "## Epochs saved by pruning and early stopping\n"
    if num_epochs is None:
        yield "Epoch budget (hpo.num_epochs) not given; nothing to compare against.\n"
        return
    finished = [t for t in trials if t.state.is_finished()]
    rows, total = [], [0, 0, 0]
    for state, cause in [
        (TrialState.COMPLETE, "early stopping"),
        (TrialState.PRUNED, "pruning"),
        (TrialState.FAIL, ""),
    ]:
        runs = [
            t.user_attrs["epochs_run"]
            for t in finished
            if t.state == state and "epochs_run" in t.user_attrs
        ]
        row = [len(runs), sum(runs), len(runs) * num_epochs]
        total = [a + b for a, b in zip(total, row, strict=True)]
        rows.append([f"{state.name} ({cause})" if cause else state.name, *row, *_saved(row)])
    rows.append(["**Total**", *total, *_saved(total)])
    yield f"Budget: {num_epochs} epochs per trial.\n"
    yield from table(["State", "Trials", "Epochs run", "Budget", "Epochs saved", "Saved %"], rows)
    missing = sum("epochs_run" not in t.user_attrs for t in finished)
    if missing:
        yield f"{missing} finished trial(s) recorded no epochs_run and are not counted.\n"


def _saved(row: list[int]) -> list[Any]:
    _, run, budget = row
    return [budget - run, f"{100 * (budget - run) / budget:.1f}" if budget else "n/a"]

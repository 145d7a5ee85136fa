"""Which study plots to draw: Optuna's plot functions, their arguments and PNG sizes, and for
each one the reason it cannot be drawn for this study (too few trials, nothing varying)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import TrialState

# File stem -> (title, optuna.visualization function); the user guide's four come first.
PLOTS = {
    "optimization_history": ("Optimization history", "plot_optimization_history"),
    "param_importance": ("Parameter importance", "plot_param_importances"),
    "parallel_coordinate": ("Parallel coordinate", "plot_parallel_coordinate"),
    "slice_plots": ("Slice plots", "plot_slice"),
    "intermediate_values": ("Intermediate values (per epoch)", "plot_intermediate_values"),
    "contour": ("Contour", "plot_contour"),
    "timeline": ("Timeline", "plot_timeline"),
    # Multi-objective studies only: validation metric against trainable parameter count.
    "pareto_front": ("Pareto front", "plot_pareto_front"),
}
MAIN_PLOTS = (*tuple(PLOTS)[:4], "pareto_front")
MULTI_ONLY = ("pareto_front",)
# Plots that fit a model across trials (fANOVA's random forest, the contour's interpolated
# surface): below this many trials with a value they would rank noise, so they are drawn over
# pruned trials too (at their best value before pruning, labelled) or skipped with a sentence.
FIT_PLOTS = ("param_importance", "contour")
MIN_FIT_TRIALS = 10


@dataclass(frozen=True)
class Plot:
    """One plot to draw, and why Optuna cannot draw it for this study (None when it can)."""

    name: str
    title: str
    function: str
    kwargs: dict[str, Any]
    size: tuple[int, int]  # PNG size in layout pixels for kaleido; the HTML stays responsive
    unavailable: str | None
    basis: str = ""  # which trials it rests on, in words for the report
    with_pruned: bool = False  # drawn on pruned_as_complete(study): pruned trials included

    @property
    def main(self) -> bool:
        return self.name in MAIN_PLOTS


def _first_value(trial: optuna.trial.FrozenTrial) -> float:
    return trial.values[0]


def pruned_as_complete(study: optuna.Study, value_attr: str | None) -> optuna.Study | None:
    """An in-memory copy of `study` in which every pruned trial that recorded `value_attr` (its
    best value of the objective before it was stopped) counts as complete with that value; None
    when no pruned trial did."""
    trials = study.get_trials(deepcopy=False)
    pruned = (
        [t for t in trials if t.state == TrialState.PRUNED and value_attr in t.user_attrs]
        if value_attr
        else []
    )
    if not pruned or len(study.directions) > 1:
        return None
    copy = optuna.create_study(direction=study.direction, study_name=study.study_name)
    for t in trials:
        if t.state == TrialState.COMPLETE:
            copy.add_trial(t)
        elif t in pruned:
            copy.add_trial(
                optuna.trial.create_trial(
                    params=t.params,
                    distributions=t.distributions,
                    value=t.user_attrs[value_attr],
                    user_attrs=t.user_attrs,
                )
            )
    return copy


def plan_plots(
    study: optuna.Study, objective_name: str, value_attr: str | None = None
) -> list[Plot]:
    """Every plot in PLOTS with its Optuna arguments, PNG size, availability and the trials it
    rests on. `value_attr` names the user attribute where a pruned trial keeps its best objective
    value before pruning (e.g. `val_accuracy`): the fitted plots may use it (see MIN_FIT_TRIALS).

    In a multi-objective study (validation metric, trainable parameter count) the per-trial
    plots show the first objective and a Pareto front plot is added; single-objective studies
    get no Pareto front.
    """
    multi = len(study.directions) > 1
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    augmented = pruned_as_complete(study, value_attr)
    n_pruned = len(augmented.trials) - len(complete) if augmented else 0
    params = sorted({p for t in complete for p in t.params})
    varying = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
    side = min(1400, max(800, 280 * len(varying)))
    sizes = {
        "parallel_coordinate": (1100, 550),
        "contour": (side, side),
        "slice_plots": (max(900, 300 * len(params)), 450),
    }
    plans = []
    for name, (title, function) in PLOTS.items():
        if name in MULTI_ONLY and not multi:
            continue
        kwargs: dict[str, Any] = {}
        if name == "pareto_front":
            kwargs["target_names"] = [objective_name, "trainable_params"]
        elif name not in ("intermediate_values", "timeline"):
            kwargs["target_name"] = objective_name
            if multi:
                kwargs["target"] = _first_value
        if name == "param_importance":  # seeded: the same importances on every rerun
            kwargs["evaluator"] = optuna.importance.FanovaImportanceEvaluator(seed=0)
        if name == "contour":  # a constant parameter would only add empty panels
            kwargs["params"] = varying
        why = _why_not(name, title, trials, len(complete), varying, multi)
        basis, with_pruned = _basis(name, trials, len(complete), n_pruned, objective_name)
        if basis.startswith("skipped: "):
            why, basis = why or basis.removeprefix("skipped: "), ""
        elif with_pruned:
            why = None  # the pruned trials give it the values it needs
            if name == "contour":
                kwargs["params"] = _varying(augmented.trials)
        plan = Plot(name, title, function, kwargs, sizes.get(name, (900, 550)), why, basis)
        plans.append(replace(plan, with_pruned=with_pruned))
    return plans


def _varying(trials: list) -> list[str]:
    params = sorted({p for t in trials for p in t.params})
    return [p for p in params if len({repr(t.params.get(p)) for t in trials}) > 1]


def _basis(
    name: str, trials: list, n_complete: int, n_pruned: int, objective: str
) -> tuple[str, bool]:
    """In words, which trials a plot rests on, and whether it needs the pruned trials."""
    completed = f"{n_complete} completed trial{'s' * (n_complete != 1)}"
    if name == "timeline":
        return f"all {len(trials)} trials, whatever their state", False
    if name == "intermediate_values":
        reported = sum(bool(t.intermediate_values) for t in trials)
        return f"the {reported} trials that reported epochs (completed and pruned)", False
    if name not in FIT_PLOTS:
        few = n_complete < MIN_FIT_TRIALS
        caution = f" (fewer than {MIN_FIT_TRIALS}: a pattern here may be chance)" if few else ""
        return completed + caution, False
    if n_complete >= MIN_FIT_TRIALS:
        return completed, False
    if n_complete + n_pruned >= MIN_FIT_TRIALS and n_pruned:
        return (
            f"{completed} and {n_pruned} pruned trials, each pruned trial at its best "
            f"{objective} before it was stopped (which understates what it would have reached): "
            f"only {n_complete} completed, fewer than the {MIN_FIT_TRIALS} a fit needs",
            True,
        )
    return (
        f"skipped: fitting it needs at least {MIN_FIT_TRIALS} trials with a value; this study "
        f"has {n_complete} completed and {n_pruned} pruned with a recorded value, and a fit to "
        "so few would rank noise",
        False,
    )


def _why_not(
    name: str, title: str, trials: list, n: int, varying: list[str], multi: bool = False
) -> str | None:
    """What the study lacks for this plot, in words for the figure and the report."""
    if name == "timeline":
        return None if trials else "The timeline needs at least 1 trial; this study has none."
    if name == "intermediate_values":
        if multi:
            return (
                "No intermediate values in multi-objective mode: trials report none, "
                "because pruning is off."
            )
        reported = any(t.intermediate_values for t in trials)
        return None if reported else "No trial has reported an intermediate value yet."
    if name == "param_importance" and n < 2:
        return f"Parameter importance needs at least 2 completed trials; this study has {n}."
    if n == 0:
        return f"{title} needs at least 1 completed trial; this study has none."
    if name == "param_importance" and not varying:
        return (
            f"Parameter importance needs a parameter that varies across completed trials; "
            f"all {n} used the same values."
        )
    if name == "contour" and (n < 2 or len(varying) < 2):
        return (
            f"The contour plot needs at least 2 completed trials and 2 parameters that vary "
            f"across them; this study has {n} completed and {len(varying)} varying."
        )
    return None

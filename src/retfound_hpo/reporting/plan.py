"""Which study plots to draw: Optuna's plot functions, their arguments and PNG sizes, and for
each one the reason it cannot be drawn for this study (too few trials, nothing varying)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Plot:
    """One plot to draw, and why Optuna cannot draw it for this study (None when it can)."""

    name: str
    title: str
    function: str
    kwargs: dict[str, Any]
    size: tuple[int, int]  # PNG size in layout pixels for kaleido; the HTML stays responsive
    unavailable: str | None

    @property
    def main(self) -> bool:
        return self.name in MAIN_PLOTS


def _first_value(trial: optuna.trial.FrozenTrial) -> float:
    return trial.values[0]


def plan_plots(study: optuna.Study, objective_name: str) -> list[Plot]:
    """Every plot in PLOTS with its Optuna arguments, PNG size and availability.

    In a multi-objective study (validation metric, trainable parameter count) the per-trial
    plots show the first objective and a Pareto front plot is added; single-objective studies
    get no Pareto front.
    """
    multi = len(study.directions) > 1
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
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
        plans.append(Plot(name, title, function, kwargs, sizes.get(name, (900, 550)), why))
    return plans


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

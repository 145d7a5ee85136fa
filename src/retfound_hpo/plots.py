"""Study plots from optuna.visualization: interactive HTML plus a PNG from kaleido or matplotlib.

A plot Optuna cannot draw (too few trials, too few varying parameters) still gets both files:
a figure whose text says why, so every link in the report opens something.
"""

from __future__ import annotations

import logging
import queue
import textwrap
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import optuna.visualization as vis
import optuna.visualization.matplotlib as vis_mpl
import plotly.graph_objects as go
from matplotlib.figure import Figure
from optuna.trial import TrialState

log = logging.getLogger(__name__)

PNG_BACKENDS = ("auto", "plotly", "matplotlib")
# The first export starts Chromium; a browser that dies on start makes kaleido's sync server
# wait forever, so every export runs under this watchdog.
KALEIDO_TIMEOUT_S = 60.0
_kaleido_broken: str | None = None  # set once kaleido hung in this process: never call it again


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


def find_chrome() -> str | None:
    """The Chrome/Chromium kaleido would use (BROWSER_PATH, PATH, typical places); no download."""
    from choreographer.browsers import Chromium

    return Chromium.find_browser(skip_local=False)


class PngWriter:
    """Writes PNGs with plotly+kaleido or matplotlib; in auto mode falls back once on failure."""

    def __init__(self, png_backend: str = "auto") -> None:
        if png_backend not in PNG_BACKENDS:
            raise ValueError(f"png_backend must be one of {PNG_BACKENDS}, got {png_backend!r}")
        self.auto = png_backend == "auto"
        self.backend = self.description = "matplotlib"
        if png_backend == "matplotlib":
            return
        chrome = find_chrome()
        if chrome is None and not self.auto:
            raise RuntimeError(
                "png_backend='plotly' needs Chrome or Chromium for kaleido "
                "(e.g. apt-get install chromium); none was found"
            )
        if chrome is None or (self.auto and _kaleido_broken):
            self.description += f" ({_kaleido_broken or 'no Chrome/Chromium found'})"
            return
        self.backend, self.description = "plotly", f"plotly + kaleido (browser: {chrome})"

    def write(
        self, path: Path, plot: Plot, study: optuna.Study, fig: go.Figure, unavailable: str | None
    ) -> None:
        if self.backend == "plotly":
            try:
                _kaleido_png(fig, path, plot.size)
                return
            except Exception as err:
                if not self.auto:
                    raise
                log.warning("plotly PNG export failed (%s); using matplotlib for the PNGs", err)
                self.backend = "matplotlib"
                self.description += f", fell back to matplotlib after: {err}"
        _matplotlib_png(path, plot, study, unavailable)


def render_plots(
    study: optuna.Study, plots_dir: Path, objective_name: str, png_backend: str = "auto"
) -> tuple[list[Plot], str]:
    """Write every plot as PNG + HTML into plots_dir; return the plots and the PNG backend used."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    writer = PngWriter(png_backend)
    log.info("PNG backend: %s", writer.description)
    done = []
    for plot in plan_plots(study, objective_name):
        why = plot.unavailable
        fig = None
        if why is None:
            try:
                fig = getattr(vis, plot.function)(study, **plot.kwargs)
            except Exception as err:  # Optuna's own checks differ between versions
                why = f"Optuna could not draw this plot: {err}"
        if fig is None:
            fig = _plotly_placeholder(plot.title, why)
        # One shared plotly.min.js beside the pages: offline (no CDN) without 5 MB per page.
        fig.write_html(plots_dir / f"{plot.name}.html", include_plotlyjs="directory")
        writer.write(plots_dir / f"{plot.name}.png", plot, study, fig, why)
        done.append(replace(plot, unavailable=why))
        log.info("wrote plots/%s.png + .html%s", plot.name, f" (placeholder: {why})" if why else "")
    return done, writer.description


def _kaleido_png(fig: go.Figure, path: Path, size: tuple[int, int]) -> None:
    global _kaleido_broken
    if _kaleido_broken:
        raise RuntimeError(_kaleido_broken)
    import kaleido

    # One Chromium for the whole process: the first export takes ~2 s, later ones ~0.2 s.
    # MathJax would come from a CDN and there is no network.
    _quiet("kaleido", "choreographer")
    kaleido.start_sync_server(mathjax=False, silence_warnings=True)
    width, height = size
    result: queue.Queue[BaseException | None] = queue.Queue(maxsize=1)

    def export() -> None:
        try:
            with warnings.catch_warnings():
                # plotly always passes kopts; with the shared server they are rightly unused.
                warnings.filterwarnings("ignore", "The kopts argument is ignored", UserWarning)
                fig.write_image(path, width=width, height=height, scale=1.5)
            result.put(None)
        except BaseException as err:  # handed to the caller's thread
            result.put(err)

    threading.Thread(target=export, name="kaleido-export", daemon=True).start()
    try:
        error = result.get(timeout=KALEIDO_TIMEOUT_S)
    except queue.Empty:
        _kaleido_broken = f"kaleido did not answer within {KALEIDO_TIMEOUT_S:.0f} s"
        raise TimeoutError(_kaleido_broken) from None
    if error is not None:
        raise error


def _quiet(*names: str) -> None:
    """Browser start-up and tab chatter at INFO would drown the stage log; respect any setting."""
    for name in names:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _matplotlib_png(path: Path, plot: Plot, study: optuna.Study, why: str | None) -> None:
    # optuna's matplotlib plots go through pyplot; Agg needs no display (DVC stages, CI).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if why is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # A single trial gives a zero-width axis; matplotlib widens it and says so.
                warnings.filterwarnings("ignore", "Attempting to set identical low and high")
                fig = _figure_of(getattr(vis_mpl, plot.function)(study, **plot.kwargs))
        except Exception as err:
            why = f"Optuna could not draw this plot: {err}"
    if why is not None:
        fig = _matplotlib_placeholder(plot.title, why)
    else:  # Optuna's default sizes cramp the multi-panel plots; use the kaleido layout size.
        fig.set_size_inches(plot.size[0] / 100, plot.size[1] / 100)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _figure_of(axes: Any) -> Figure:
    """optuna.visualization.matplotlib returns one Axes or an ndarray of them."""
    if isinstance(axes, np.ndarray):
        axes = axes.flat[0]
    return axes.figure


def _plotly_placeholder(title: str, why: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text="<br>".join(textwrap.wrap(why, 60)),
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 16},
    )
    fig.update_layout(
        title=f"{title}: not available",
        xaxis={"visible": False},
        yaxis={"visible": False},
        template="plotly_white",
    )
    return fig


def _matplotlib_placeholder(title: str, why: str) -> Figure:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7.5, 4.5))
    fig.suptitle(f"{title}: not available")
    fig.text(0.5, 0.5, "\n".join(textwrap.wrap(why, 60)), ha="center", va="center", fontsize=13)
    return fig

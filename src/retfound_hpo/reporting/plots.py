"""Study plots from optuna.visualization: interactive HTML plus a PNG from kaleido or matplotlib.

A plot Optuna cannot draw (too few trials, too few varying parameters) still gets both files:
a figure whose text says why, so every link in the report opens something.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import replace
from pathlib import Path

import optuna
import optuna.visualization as vis
import plotly.graph_objects as go

from retfound_hpo.reporting.plan import Plot, plan_plots, pruned_as_complete
from retfound_hpo.reporting.png import PngWriter

log = logging.getLogger(__name__)


def render_plots(
    study: optuna.Study,
    plots_dir: Path,
    objective_name: str,
    png_backend: str = "auto",
    value_attr: str | None = None,
) -> tuple[list[Plot], str]:
    """Write every plot as PNG + HTML into plots_dir; return the plots and the PNG backend used.
    `value_attr`: see plan.plan_plots."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    writer = PngWriter(png_backend)
    log.info("PNG backend: %s", writer.description)
    with_pruned = pruned_as_complete(study, value_attr)
    done = []
    for plot in plan_plots(study, objective_name, value_attr):
        why = plot.unavailable
        drawn_on = with_pruned if plot.with_pruned else study
        fig = None
        if why is None:
            try:
                fig = getattr(vis, plot.function)(drawn_on, **plot.kwargs)
            except Exception as err:  # Optuna's own checks differ between versions
                why = f"Optuna could not draw this plot: {err}"
        if fig is None:
            fig = _plotly_placeholder(plot.title, why)
        # One shared plotly.min.js beside the pages: offline (no CDN) without 5 MB per page.
        fig.write_html(plots_dir / f"{plot.name}.html", include_plotlyjs="directory")
        writer.write(plots_dir / f"{plot.name}.png", plot, drawn_on, fig, why)
        done.append(replace(plot, unavailable=why))
        log.info("wrote plots/%s.png + .html%s", plot.name, f" (placeholder: {why})" if why else "")
    return done, writer.description


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

"""PNG files of the study plots: plotly + kaleido (Chromium) where a browser works, else Optuna's
matplotlib plots; placeholders that say why a plot cannot be drawn."""

from __future__ import annotations

import logging
import queue
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import optuna.visualization.matplotlib as vis_mpl
import plotly.graph_objects as go
from matplotlib.figure import Figure

from retfound_hpo.reporting.plan import Plot

log = logging.getLogger(__name__)

PNG_BACKENDS = ("auto", "plotly", "matplotlib")
# The first export starts Chromium; a browser that dies on start makes kaleido's sync server
# wait forever, so every export runs under this watchdog.
KALEIDO_TIMEOUT_S = 60.0
_kaleido_broken: str | None = None  # set once kaleido hung in this process: never call it again


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


def _matplotlib_placeholder(title: str, why: str) -> Figure:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7.5, 4.5))
    fig.suptitle(f"{title}: not available")
    fig.text(0.5, 0.5, "\n".join(textwrap.wrap(why, 60)), ha="center", va="center", fontsize=13)
    return fig

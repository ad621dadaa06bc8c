"""Figures without pyplot, and LivePlot: curves that redraw in place in a notebook, or go to a PNG file elsewhere.

Every hpcai figure -- LivePlot's, the applications', the control panel's -- is a plain
``matplotlib.figure.Figure`` from :func:`new_figure`, drawn by the Agg canvas (no pyplot state, so safe in
threads and on engines; no GUI backend, no ipympl), rendered by :func:`png_bytes`, written atomically by
:func:`save_png`. In IPython a LivePlot is shown once with ``display(..., display_id=True)`` and then replaced
through the returned handle's ``update``, so one output cell shows the latest curves; outside IPython it is
saved to ``path`` (atomically) when one is given, and otherwise nothing happens. Rank 0 only.
"""
from __future__ import annotations

import io as _stdio
import os
import sys

from .. import io
from .callbacks import Callback


def new_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas (``figsize``, ``layout``, ...), or an ImportError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'hpcai[plot]'") from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, dpi: int = 90) -> bytes:
    """``fig`` rendered as PNG."""
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(figure, path, dpi: int = 110) -> str:
    """Write ``figure`` -- a Figure, or PNG bytes already rendered -- to ``path`` (temp file + rename); its path."""
    def write(tmp):
        if isinstance(figure, (bytes, bytearray)):
            with open(tmp, "wb") as f:
                f.write(figure)
        else:
            figure.savefig(tmp, dpi=dpi, format="png")
    io.atomic_write(path, write)
    return os.fspath(path)


def _ipython_display():
    """IPython's ``display`` and ``Image`` when running under an IPython shell, else None."""
    ipython = sys.modules.get("IPython")
    if ipython is None or ipython.get_ipython() is None:
        return None
    from IPython.display import Image, display
    return display, Image


class LivePlot(Callback):
    """Curves of ``metrics`` (default: every logged value but lr/time), each with its ``val_`` twin.

    ``every``: redraw every that many epochs (and at the end). ``path``: also save a PNG there.
    """

    def __init__(self, metrics=None, path=None, every: int = 1, figsize=(8.0, 3.0)):
        self.metrics, self.path, self.every, self.figsize = metrics, path and os.fspath(path), int(every), figsize
        self.handle, self.figure, self.draws = None, None, 0

    def _names(self, logs) -> list:
        if self.metrics is not None:
            return list(self.metrics)
        skip = {"lr", "time", "skipped_steps"}
        return [k for k in logs if k not in skip and not k.startswith("val_")]

    def render(self):
        """Redraw the figure from the history; returns it."""
        history = self.loop.history
        names = self._names(history)
        fig = new_figure(figsize=self.figsize, layout="constrained")
        for i, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), i + 1)
            for key, style in ((name, "-o"), (f"val_{name}", "--o")):
                if key in history:
                    ax.plot(history.epoch, history[key], style, label=key, markersize=3)
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        self.figure = fig
        return fig

    def _show(self):
        png = png_bytes(self.render())
        shown = _ipython_display()
        if shown is not None:
            display, Image = shown
            if self.handle is None:
                self.handle = display(Image(data=png, format="png"), display_id=True)
            else:
                self.handle.update(Image(data=png, format="png"))
        if self.path:
            save_png(png, self.path)
        self.draws += 1

    def _wanted(self) -> bool:
        return self.loop.rank == 0 and (self.path or _ipython_display() is not None)

    def on_train_begin(self, logs=None):
        self.handle = None

    def on_epoch_end(self, epoch, logs=None):
        if self._wanted() and ((epoch + 1) % self.every == 0 or epoch + 1 == self.loop.epochs):
            self._show()

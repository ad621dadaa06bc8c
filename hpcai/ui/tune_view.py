"""The live view of a study in a notebook: counts and the best so far, a table of trials, intermediate curves.

``TuneView(tuner)`` (a cell's last line shows it) refreshes itself every second while the Tuner runs: pruned
and failed trials are counted and coloured, each trial's row says which group and ranks ran it, and the curves
are the intermediate values the pruner saw (one line per trial, pruned ones dashed). Optuna's own figures
(history, parallel coordinate, importances) come from :meth:`hpcai.tune.Tuner.plot` on request.
"""
from __future__ import annotations

import html
import threading

from ..train.plot import new_figure, png_bytes

REFRESH = 1.0  # seconds between refreshes while the study runs
ROWS = 40      # newest trials shown in the table
COLOURS = {"COMPLETE": "#1a7f37", "PRUNED": "#9a6700", "FAIL": "#cf222e", "RUNNING": "#0969da", "WAITING": "#57606a"}


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("the study view needs ipywidgets: pip install 'hpcai[notebook]'") from None
    return ipywidgets


class TuneView:
    """A widget showing ``tuner``'s study; :meth:`refresh` redraws it, :meth:`close` ends it."""

    def __init__(self, tuner, refresh: float = REFRESH):
        w = _ipywidgets()
        self.tuner, self.every = tuner, refresh
        self.header, self.table = w.HTML(), w.HTML()
        self.curves = w.Image(format="png", layout=w.Layout(max_width="560px"))
        self._row = w.HBox([self.table, self.curves])
        self.widget = w.VBox([self.header, self._row])
        self.widget.add_class("hpcai-tune")
        self._closed, self._drawn = threading.Event(), None
        self.refresh()
        self._thread = threading.Thread(target=self._follow, name="hpcai-tune-view", daemon=True)
        self._thread.start()

    def _follow(self):
        while not self._closed.wait(self.every):
            if self.tuner.running or self._drawn != self._state():
                self.refresh()

    def _state(self):
        return [(t["number"], t["state"], len(t["intermediate"])) for t in self.tuner.trials()]

    def refresh(self) -> None:
        """Redraw the counts, the table and the curves from the study as it is now."""
        trials = self.tuner.trials()
        c = self.tuner.counts()
        best = self.tuner.best_value
        state = "running" if self.tuner.running else "idle"
        self.header.value = (
            f"<b>study {html.escape(self.tuner.name)}</b> ({state}, {self.tuner.direction} "
            f"{html.escape(str(self.tuner.metric or 'value'))}): {c['COMPLETE']} complete, {c['PRUNED']} pruned, "
            f"{c['FAIL']} failed, {c['RUNNING']} running &mdash; best "
            f"{'-' if best is None else f'{best:.4g}'} with {html.escape(str(self.tuner.best_params))}")
        self.table.value = _table(trials[-ROWS:])
        image = _curves(trials)
        if image is not None:
            self.curves.value = image
        self._drawn = [(t["number"], t["state"], len(t["intermediate"])) for t in trials]

    def close(self) -> None:
        self._closed.set()
        for widget in (self.header, self.table, self.curves, self._row, self.widget):
            widget.close()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _table(trials: list[dict]) -> str:
    names = sorted({k for t in trials for k in t["params"]})
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["#", "state", "value", *names, "group (ranks)", "s"])
    rows = []
    for t in trials:
        cells = [str(t["number"]), f"<span style='color:{COLOURS.get(t['state'], '#000')}'>{t['state']}</span>",
                 "-" if t["value"] is None else f"{t['value']:.4g}"]
        cells += [_cell(t["params"].get(n)) for n in names]
        cells.append("" if t["ranks"] is None else f"{t['group']} ({t['ranks']})")
        cells.append("" if t["seconds"] is None else f"{t['seconds']:.1f}")
        title = html.escape(t["error"] or "", quote=True)
        rows.append(f"<tr title='{title}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table style='font-size:90%'><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(value) -> str:
    return "" if value is None else f"{value:.3g}" if isinstance(value, float) else html.escape(str(value))


def _curves(trials: list[dict]) -> bytes | None:
    """Each trial's intermediate values against the step (percent of training), pruned ones dashed."""
    shown = [t for t in trials if t["intermediate"]]
    if not shown:
        return None
    fig = new_figure(figsize=(5, 3), layout="constrained")
    ax = fig.add_subplot()
    for t in shown:
        steps = sorted(t["intermediate"])
        ax.plot(steps, [t["intermediate"][s] for s in steps], ls="--" if t["state"] == "PRUNED" else "-",
                color=COLOURS.get(t["state"], "#000"), lw=1, alpha=0.8)
    ax.set(xlabel="step (percent of training)", ylabel="intermediate value", title="intermediate values")
    return png_bytes(fig, dpi=80)

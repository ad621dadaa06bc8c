"""The run history in a notebook: a table of past runs, newest first, and a past run's saved figures.

``HistoryView(folder)`` reads ``folder``'s ``history.jsonl`` (:mod:`hpcai.history`): one row per run with the
settings that differ between the runs shown as columns, then the application's key metrics, so precisions,
optimizers and strategies compare side by side. A row's button shows that run's saved figures (PNG files)
below the table, each with its path; :meth:`refresh` re-reads the file (after a run, say).
"""
from __future__ import annotations

import datetime
import html
import os
import threading

from .. import checks, history
from .plots import shown_path

ROWS = 50      # newest runs shown
ALL = "all applications"
COLOURS = {"finished": "#1a7f37", "failed": "#cf222e", "stopped": "#9a6700"}


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("the run history view needs ipywidgets: pip install 'hpcai[notebook]'") from None
    return ipywidgets


class HistoryView:
    """A widget (``.widget``) showing the runs recorded in ``folder``; ``app`` shows one application's only.

    :meth:`refresh` re-reads the history, :meth:`select` shows a run's figures (what a row's button does).
    """

    def __init__(self, folder, app: str | None = None, rows: int = ROWS):
        w = _ipywidgets()
        self.folder = history.path_of(folder)
        self.rows = checks.integer("rows", rows, 1)
        self.records, self.selected, self._refreshing = [], None, False
        self._lock = threading.RLock()  # the panel refreshes from its run thread, a click from the kernel's
        self.header = w.HTML()
        if app is not None and not isinstance(app, str):
            raise TypeError(f"app: expected an application's name or None, got {app!r}")
        self.app = w.Dropdown(options=[ALL] + ([app] if app else []), value=app or ALL, description="show",
                              layout=w.Layout(width="280px"))
        self.refresh_button = w.Button(description="refresh", icon="refresh", layout=w.Layout(width="100px"))
        self.table = w.GridBox(layout=w.Layout(grid_gap="2px 12px"))
        self.figures = w.VBox()
        self.widget = w.VBox([w.HBox([self.header, self.app, self.refresh_button]), self.table, self.figures])
        self.widget.add_class("hpcai-history")
        self.refresh()
        self.app.observe(lambda change: self._refreshing or self._draw(), names="value")
        self.refresh_button.on_click(lambda button: self.refresh())

    def refresh(self) -> None:
        """Re-read the history file and redraw the table (the figures shown stay)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        self.records = history.load(self.folder)
        apps = sorted({r["app"] for r in self.records})
        keep = self.app.value
        self._refreshing = True  # one redraw below, not one per change of the dropdown too
        try:
            self.app.options = [ALL, *apps] + ([keep] if keep not in (ALL, *apps) else [])
            self.app.value = keep
        finally:
            self._refreshing = False
        self._draw()

    def shown(self) -> list[dict]:
        """The records in the table, newest first."""
        app = self.app.value
        records = [r for r in self.records if app == ALL or r["app"] == app]
        return records[::-1][:self.rows]

    def _draw(self) -> None:
        with self._lock:
            self._draw_table()

    def _draw_table(self) -> None:
        w = _ipywidgets()
        records = self.shown()
        table = history.compare(records)
        columns = [c for c in table.columns if not (c == "app" and self.app.value != ALL)]
        where = html.escape(shown_path(os.path.dirname(os.path.abspath(self.folder))))
        self.header.value = (f"<b>Run history</b>: {len(records)} of {len(self.records)} run(s) in "
                             f"<code>{where}</code>" if self.records else
                             f"<b>Run history</b>: no runs recorded in <code>{where}</code> yet")
        cells = [w.HTML(f"<b>{html.escape(_label(c))}</b>") for c in ["", *columns]]
        for record, row in zip(records, table.dicts()):
            button = w.Button(description="figures", tooltip=f"show the figures of run {record['id']}",
                              disabled=not record.get("figures"), layout=w.Layout(width="76px"))
            button.on_click(lambda b, run=record["id"]: self.select(run))
            cells.append(button)
            cells += [w.HTML(_html(c, row[c], record)) for c in columns]
        previous, self.table.children = self.table.children, cells
        for widget in previous:  # each holds a comm to the front end: closed, not left to pile up per redraw
            _close_tree(widget)
        self.table.layout.grid_template_columns = f"repeat({len(columns) + 1}, max-content)"

    def select(self, run: str) -> dict:
        """Show run ``run``'s saved figures (its id, as in the records) below the table; returns its record."""
        record = next((r for r in self.records if r["id"] == run), None)
        if record is None:
            raise ValueError(f"run: expected the id of a recorded run, got {run!r}")
        w = _ipywidgets()
        self.selected = record
        settings = ", ".join(f"{k}={v}" for k, v in record["config"].items() if k != "output_dir")
        items = [w.HTML(f"<b>{html.escape(record['app'])} run of {html.escape(_when(record['start']))}</b> "
                        f"({html.escape(record['status'])}): {html.escape(settings)}")]
        images = []
        for name, path in record.get("figures", {}).items():
            note = _staleness(path, record)
            if note is None:
                with open(path, "rb") as f:
                    image = w.Image(value=f.read(), format="png", layout=w.Layout(max_width="560px"))
                images.append(w.VBox([image, w.HTML(f"{html.escape(name)}: <code>{html.escape(shown_path(path))}</code>")]))
            else:
                items.append(w.HTML(f"{html.escape(name)}: <code>{html.escape(shown_path(path))}</code> {html.escape(note)}"))
        if not record.get("figures"):
            items.append(w.HTML("this run saved no figures"))
        previous, self.figures.children = self.figures.children, [*items, w.HBox(images, layout=w.Layout(
            flex_flow="row wrap"))]
        for widget in previous:
            _close_tree(widget)
        return record

    def close(self) -> None:
        _close_tree(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _close_tree(widget) -> None:
    """Close a widget and everything inside it (each holds a comm to the front end), its own layout and style
    included (closing a widget leaves those open)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if part is not None:
            part.close()
    widget.close()


def _staleness(path: str, record: dict) -> str | None:
    """Why a figure cannot be shown as this run drew it: missing, or rewritten by a later run; None if fine."""
    try:
        modified = os.stat(path).st_mtime
    except OSError:
        return "(missing: moved or deleted since the run)"
    end = datetime.datetime.fromisoformat(record["start"]).timestamp() + float(record.get("seconds") or 0)
    if modified > end + 2:
        return "(rewritten after this run, by a later run in the same folder: not shown)"
    return None


def _label(column: str) -> str:
    return column.partition(".")[2] or column


def _when(start: str) -> str:
    """An ISO time as local "YYYY-MM-DD HH:MM:SS"."""
    try:
        return datetime.datetime.fromisoformat(start).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(start)


def _html(column: str, value, record: dict) -> str:
    if column == "start":
        return html.escape(_when(value))
    if column == "status":
        title = f' title="{html.escape(record["error"], quote=True)}"' if record.get("error") else ""
        return f'<span style="color:{COLOURS.get(value, "inherit")}"{title}>{html.escape(str(value))}</span>'
    if column == "seconds" and isinstance(value, (int, float)):
        return f"{value:.1f}"
    return html.escape("-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))

"""The control panel: pick an application, a precision, an optimizer, a parallel strategy and engines; Run, Stop.

Everything it offers is read from registries and dataclasses, so a new application, policy or optimizer
appears without a change here: applications from :data:`hpcai.apps.APPS`; a Config field's choices from
its ``metadata["choices"]`` (else the precision / optimizer registries); the application's sizes from the
remaining Config fields, one input each, labelled in words with the field's unit and its help on hover
(``metadata["help"]``, ``metadata["unit"]``). The combination is validated by the Config as it changes, so Run
is only offered for something that can run, and the reason is shown when it cannot. A choice that the Config
would refuse with the other fields as they are is not offered at all: the Config's own ``validate`` decides
(one source of the rules), and the reasons show on hover and under the choices.

Run starts (or reuses) ipyparallel MPI engines -- or runs in this kernel with 0 engines -- in a worker
thread, so the notebook stays responsive: the progress bar and the live loss plot follow what the ranks
publish (elapsed time, rate, time left; one bar across the application's phases); live-plot renders are
applied in order. Then the results view shows the metrics, grouped with their units, and the application's
figures at their own aspect, each with its saved path and a button to see it full size. An error on any
engine appears as a one-line headline, the engines' tracebacks folded below it. Stop interrupts the run
(engines get SIGINT; a rank stuck in MPI is ended by the engines' watchdog and fresh engines are started on
the next Run) -- unless every rank has already finished: then the run ends as it would have, results shown.
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import itertools
import os
import re
import struct
import threading
import time

from .. import amp, optim
from ..apps import APPS, Stopped, config_fields
from ..apps.progress import duration
from ..runner import headline, make_config, run_app
from .history_view import HistoryView, _close_tree
from .plots import loss_png, shown_path

TOP = ("precision", "optimizer", "strategy")  # fields shown as the panel's own dropdowns, not among the sizes
HIDDEN = ("output_dir",)                      # fields the panel sets itself
REGISTRIES = {"precision": tuple(amp.POLICIES), "optimizer": tuple(optim.OPTIMIZERS)}
PLOT_EVERY = 1.0  # seconds between live-plot renders
MAX_ENGINES = 1024
THUMBNAIL = 440  # px: the widest a figure is drawn in the results view until enlarged


def _widgets():
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("the control panel needs ipywidgets: pip install 'hpcai[notebook]'") from None
    return ipywidgets


def _choices(spec):
    return spec.choices or REGISTRIES.get(spec.name)


def _format(value, unit: str = "") -> str:
    """A metric's value for the results table, bytes in KiB/MiB/GiB, others with their unit."""
    if unit.lower() in ("b", "byte", "bytes") and isinstance(value, (int, float)) and not isinstance(value, bool):
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:g} B"
    text = f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
    return f"{text} {html.escape(unit)}" if unit else text


def _label(f: dataclasses.Field) -> str:
    """A Config field's label in words, with its unit: ``holdout_every`` -> ``holdout every``, ``dt (s)``."""
    unit = f.metadata.get("unit")
    return f.name.replace("_", " ") + (f" ({unit})" if unit else "")


def _describe(widget, label: str, tip: str) -> None:
    """Label ``widget`` with ``label`` and show ``tip`` on hovering the label (ipywidgets 8 front ends show no
    ``tooltip`` on a labelled dropdown or number box, so the label carries it as its title too)."""
    widget.tooltip = tip
    if isinstance(widget, _widgets().Checkbox):  # its label is plain text (the front end titles it with its text)
        widget.description = label
        return
    widget.description_allow_html = True
    widget.description = f"<span title='{html.escape(tip, quote=True)}'>{html.escape(label)}</span>"


def label_text(widget) -> str:
    """A widget's label as people read it (without the markup that carries its hover help)."""
    return html.unescape(re.sub(r"<[^>]+>", "", widget.description))


def metric_groups(app, metrics: dict) -> dict[str, list[tuple[str, object, str]]]:
    """``{group: [(metric, value, unit)]}``: the application's ``metric_info`` (``{name: (group, unit)}``) where
    it declares one, else groups by the names' first word (``test_accuracy`` and ``test_loss``: "test")."""
    info = getattr(app, "metric_info", None) or {}
    prefixes = [name.split("_", 1)[0] for name in metrics if name not in info]
    groups: dict[str, list] = {}
    for name, value in metrics.items():
        if name in info:
            group, unit = info[name]
        else:
            prefix = name.split("_", 1)[0]
            group, unit = (prefix if "_" in name and prefixes.count(prefix) > 1 else "run"), ""
        groups.setdefault(group, []).append((name, value, unit))
    return groups


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG's header; None for anything else."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def parse_engines(text) -> int:
    """The engines box's text as a whole number in [0, MAX_ENGINES], else a ValueError saying so."""
    word = str(text).strip()
    if not re.fullmatch(r"[0-9]+", word) or int(word) > MAX_ENGINES:
        raise ValueError(f"engines: expected a whole number from 0 to {MAX_ENGINES}, got {str(text)!r}")
    return int(word)


class Panel:
    """The hpcai control panel (display it in a notebook: ``Panel()`` as a cell's last line).

    Args:
        app: the application selected at first (a name in :data:`hpcai.apps.APPS`).
        engines: MPI engines to run on (0: in this kernel's own process).
        output_dir: where each run's results and figures go (a folder per run inside it).
        engine_options: passed to :class:`hpcai.cluster.Engines` (``{"launcher": "slurm", "queue": ...,
            "account": ...}`` puts the engines on compute nodes; default: local, or the ``HPCAI_*`` settings).
        **values: initial values of the application's Config fields (``epochs=5``, ``precision="fp16"``).
    """

    def __init__(self, app: str = "digits", engines: int = 2, output_dir: str = "hpcai-results",
                 engine_options: dict | None = None, **values):
        w = _widgets()
        make_config(app, values)  # the application's own checks, naming the field, before any widget exists
        if isinstance(engines, bool) or not isinstance(engines, int) or not 0 <= engines <= MAX_ENGINES:
            raise ValueError(f"engines: expected an integer in [0, {MAX_ENGINES}], got {engines!r}")
        if not isinstance(output_dir, (str, os.PathLike)):
            raise TypeError(f"output_dir: expected a folder path, got {output_dir!r}")
        self.output_dir, self.state, self.result, self.error, self._building = output_dir, "idle", None, None, False
        if engine_options is not None and not isinstance(engine_options, dict):
            raise TypeError(f"engine_options: expected a dict of Engines arguments, got {engine_options!r}")
        self.engine_options = dict(engine_options or {})
        self._engines, self._thread, self._stop, self._plotted = None, None, threading.Event(), 0.0
        self._rendering = threading.Event()  # a live-plot render is under way
        self._renders = itertools.count(1)  # each live-plot render's number, in the order the reports came
        self._shown = self._floor = 0  # the render on show; renders numbered up to _floor belong to earlier runs
        self._finished = False  # every rank of the current run reported its run finished
        self._running = ""  # the status of the run under way, once its engines are up
        self._warm = False  # the live plot's first render (loading matplotlib) was done ahead of time
        self._last: list = []  # the ranks' latest reports
        self._lock = threading.RLock()
        self.app = w.Dropdown(options=[(name, name) for name in APPS], value=app, description="application")
        self.about = w.HTML()
        self.top = {name: w.Dropdown(description={"strategy": "parallel"}.get(name, name)) for name in TOP}
        # text, checked here: a number box's own parsing turns "2.5" into 25 and clamps 5000 silently
        self.engines = w.Text(value=str(engines), description="engines", continuous_update=True,
                              tooltip=f"MPI engines (ipyparallel), a whole number from 0 to {MAX_ENGINES}; "
                                      f"0 runs in this kernel", layout=w.Layout(width="160px"))
        self.unavailable = w.HTML()  # the choices not offered with the settings as they are, and why
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.sizes = w.GridBox(layout=w.Layout(grid_template_columns="repeat(3, 1fr)"))
        self.validation = w.HTML()
        self.status = w.HTML()
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="50%"))
        self.progress_text = w.HTML()
        self.timing = w.HTML()  # elapsed, rate, time left
        self.live = w.Image(format="png", layout=w.Layout(display="none"))
        self.metrics = w.HTML()
        self.figures = w.Box(layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.results = w.VBox([w.HTML("<b>Results</b>"), self.metrics, self.figures], layout=w.Layout(display="none"))
        self.study = w.VBox(layout=w.Layout(display="none"))  # a study's live view (:meth:`tune`)
        self.tuner = self._view = None
        self.fields: dict = {}
        for widget, cls in [(self.app, "app"), *[(d, n) for n, d in self.top.items()], (self.engines, "engines"),
                            (self.run_button, "run"), (self.stop_button, "stop"), (self.status, "status"),
                            (self.validation, "validation"), (self.progress, "progress"), (self.live, "live"),
                            (self.results, "results"), (self.sizes, "sizes"), (self.study, "study"),
                            (self.unavailable, "unavailable"), (self.timing, "timing")]:
            widget.add_class(f"hpcai-{cls}")
        sizes = w.Accordion([self.sizes])
        sizes.set_title(0, "sizes and settings")
        self.history = HistoryView(output_dir)   # every run of the panel, newest first (:mod:`hpcai.history`)
        past = w.Accordion([self.history.widget])
        past.set_title(0, "run history")
        self.widget = w.VBox([
            w.HTML("<h3 style='margin:0'>hpcai</h3>"), w.HBox([self.app, self.about]),
            w.HBox(list(self.top.values())), self.unavailable,
            w.HBox([self.engines, self.run_button, self.stop_button]), sizes, self.validation, self.status,
            w.HBox([self.progress, w.VBox([self.timing, self.progress_text])]), self.live, self.study, self.results,
            past])
        self.widget.add_class("hpcai-panel")
        self.app.observe(self._on_app, names="value")
        self.engines.observe(lambda change: self._validate(), names="value")
        for d in self.top.values():
            d.observe(lambda change: self._validate(), names="value")
        self.run_button.on_click(lambda button: self.run())
        self.stop_button.on_click(lambda button: self.stop())
        self._build(values)
        self._set_state("idle")

    # -- building and reading the form -------------------------------------------------------------------
    def _on_app(self, change) -> None:
        self._build({})

    def _build(self, values: dict) -> None:
        """Widgets for the selected application's Config fields (its defaults, overridden by ``values``)."""
        w = _widgets()
        spec = APPS[self.app.value]
        self.about.value = f"<i>{html.escape(spec.description)}</i>"
        defaults = {**dataclasses.asdict(spec.config()), **values}
        fields = {f.name: f for f in config_fields(spec.config)}
        declared = {f.name: f for f in dataclasses.fields(spec.config)}
        self._help = {name: f.help for name, f in fields.items()}  # the field's help, its bounds, its default
        with self._quiet():
            for name, dropdown in self.top.items():
                if name in fields:
                    dropdown.options = _choices(fields[name])
                    dropdown.value = defaults[name]
                    _describe(dropdown, {"strategy": "parallel"}.get(name, name), self._help[name])
                dropdown.layout.display = None if name in fields else "none"
        previous, self.fields = list(self.fields.values()), {}
        for name, f in fields.items():
            if name in TOP or name in HIDDEN:
                continue
            value, kind, choices = defaults[name], f.kind, _choices(f)
            common = {"style": {"description_width": "initial"}}
            if choices:
                widget = w.Dropdown(options=choices, value=value, **common)
            elif kind is bool:
                widget = w.Checkbox(value=bool(value), **common)
            elif f.optional:
                widget = w.Text(value="" if value is None else str(value), placeholder="auto", **common)
            elif kind is int:
                widget = w.IntText(value=value, **common)
            elif kind is float:
                widget = w.FloatText(value=value, **common)
            else:
                widget = w.Text(value=str(value), **common)
            _describe(widget, _label(declared[name]), self._help[name])
            widget.add_class(f"hpcai-field-{name}")
            widget.observe(lambda change: self._validate(), names="value")
            self.fields[name] = widget
        self.sizes.children = list(self.fields.values())
        for widget in previous:  # the previous application's inputs, now off the page
            _close_tree(widget)
        self._choices = {name: tuple(_choices(fields[name])) for name, widget in self._choice_widgets().items()}
        self._validate()

    @contextlib.contextmanager
    def _quiet(self):
        """No validation while several widgets change together."""
        self._building = True
        try:
            yield
        finally:
            self._building = False

    def _choice_widgets(self) -> dict:
        """The dropdowns of the selected application's fields that have choices: the panel's own and the sizes'."""
        fields = {f.name for f in dataclasses.fields(APPS[self.app.value].config)}
        return {**{n: d for n, d in self.top.items() if n in fields},
                **{n: d for n, d in self.fields.items() if isinstance(d, _widgets().Dropdown)}}

    def refused(self) -> dict[str, dict]:
        """``{field: {value: reason}}``: each choice the Config refuses with the other fields as set (the fields
        that do not parse taken at their defaults), with its reason -- the Config's own message. A refusal
        that is the same whatever the choice (another field is wrong) disables nothing."""
        name = self.app.value
        fields = {f.name: f for f in config_fields(APPS[name].config)}
        base = {}
        for field, widget in {**self.top, **self.fields}.items():
            if field in fields:
                with contextlib.suppress(ValueError, TypeError):
                    value = widget.value
                    base[field] = fields[field].parse(value) if isinstance(value, str) else value
        try:
            make_config(name, base)
            base_error = None
        except (ValueError, TypeError) as e:
            base_error = str(e)
        out: dict[str, dict] = {}
        for field in self._choice_widgets():
            for value in self._choices[field]:
                if value == base.get(field):
                    continue
                try:
                    make_config(name, {**base, field: value})
                except (ValueError, TypeError) as e:
                    if str(e) != base_error:  # the reason, without the list of what is expected
                        out.setdefault(field, {})[value] = re.sub(r"; expected .*$", "", str(e), flags=re.S)
        return out

    def _offer(self) -> None:
        """Offer only the choices the Config accepts with the other fields as they are; say why not the rest
        (on hover over the dropdown, and under the choices)."""
        refused = self.refused()
        with self._quiet():
            for field, widget in self._choice_widgets().items():
                out = refused.get(field, {})
                offered = tuple(v for v in self._choices[field] if v not in out or v == widget.value)
                if tuple(widget.options) != offered:
                    value = widget.value
                    widget.options = offered
                    widget.value = value
                why = "".join(f"\n- {v}: {reason}" for v, reason in out.items())
                tip = self._help.get(field, "") + (f"\nNot offered with these settings:{why}" if why else "")
                if tip != widget.tooltip:
                    _describe(widget, label_text(widget), tip)
        items = [f"<li><b>{html.escape(field)} {html.escape(str(v))}</b>: {html.escape(reason)}</li>"
                 for field, out in refused.items() for v, reason in out.items()]
        names = "; ".join(html.escape(field) + " " + ", ".join(
            f"<span title='{html.escape(reason, quote=True)}'>{html.escape(str(v))}</span>" for v, reason in out.items())
            for field, out in refused.items())
        self.unavailable.value = (f"<details style='font-size:smaller;color:#555'><summary>not offered with these "
                                  f"settings: {names}</summary><ul>{''.join(items)}</ul></details>" if items else "")

    def engine_count(self) -> int:
        """The engines box as a number (raises ValueError naming the box and the range when it is not one)."""
        return parse_engines(self.engines.value)

    def values(self) -> dict:
        """The Config fields as set in the form (raises ValueError naming a field that does not parse)."""
        fields = {f.name: f for f in config_fields(APPS[self.app.value].config)}
        out = {name: self.top[name].value for name in TOP if name in fields}
        for name, widget in self.fields.items():
            value = widget.value
            out[name] = fields[name].parse(value) if isinstance(value, str) else value
        return out

    def config(self):
        """The selected application's validated Config (without its output folder)."""
        return make_config(self.app.value, self.values())

    def _validate(self) -> bool:
        """Offer the choices the other settings allow and enable Run if the Config validates. Under the lock:
        the run's worker thread calls it when a run ends, while the user may be editing in the kernel's."""
        with self._lock:
            return self._validate_locked()

    def _validate_locked(self) -> bool:
        if self._building:
            return False
        self._offer()
        try:
            self.engine_count()
            self.config()
        except (ValueError, TypeError) as e:
            self.validation.value = f"<span style='color:#b00'>cannot run: {html.escape(str(e))}</span>"
            self.run_button.disabled = True
            return False
        self.validation.value = ""
        self.run_button.disabled = self.state in ("starting", "running")
        return True

    # -- running -----------------------------------------------------------------------------------------
    def run(self) -> threading.Thread | None:
        """Start a run in a worker thread (what the Run button does); returns the thread, None if refused."""
        with self._lock:
            if self.state in ("starting", "running") or not self._validate():
                return None
            config = self.config()
            folder = os.path.join(self.output_dir, self.app.value, time.strftime("%Y%m%d-%H%M%S"))
            if "output_dir" in {f.name for f in dataclasses.fields(config)}:
                config = dataclasses.replace(config, output_dir=os.path.abspath(folder))
            self._stop.clear()
            self.result = self.error = None
            self.results.layout.display = "none"
            self.live.layout.display = "none"
            self.progress.value, self.progress_text.value, self.timing.value, self._plotted = 0.0, "", "", 0.0
            self._floor, self._finished, self._last = next(self._renders), False, []  # earlier renders: stale
            n = self.engine_count()
            self._set_state("starting" if n else "running",
                            f"starting {n} MPI engines" if n and not self._engines_ready(n) else None)
            self._thread = threading.Thread(target=self._job, args=(self.app.value, config, n), daemon=True,
                                            name="hpcai-panel-run")
            self._thread.start()
            if not self._warm:  # the plotting library loads while the run starts, not at its first loss
                self._warm = True
                threading.Thread(target=loss_png, args=([{"steps": [1, 2], "losses": [1.0, 0.5]}],), daemon=True,
                                 name="hpcai-plot-warm").start()
            return self._thread

    def _engines_ready(self, n: int) -> bool:
        return self._engines is not None and self._engines.n == n and self._engines.running

    def _engines_of(self, n: int):
        """The panel's Engines of ``n`` ranks (kept between runs; others stopped), not necessarily started."""
        if self._engines is not None and self._engines.n != n:
            self._engines.stop_sync()
            self._engines = None
        if self._engines is None:
            from ..cluster import Engines
            self._engines = Engines(n=n, **self.engine_options)
        return self._engines

    def _job(self, name, config, n) -> None:
        start = time.perf_counter()
        self._running = f"running {name} on {n} MPI engine(s)" if n else f"running {name} in this kernel"
        try:
            if not n or self._engines_ready(n):
                self._set_state("running", self._running)
            # run_app starts the engines (the state says "running" at their first report): a start that fails
            # is a failed run, recorded in the run history like any other
            result = run_app(name, config, engines=self._engines_of(n) if n else 0, verbose=0, progress=self._on_progress, stop=self._stop,
                             history=self.output_dir)
        except Stopped:
            self._set_state("stopped", f"stopped after {time.perf_counter() - start:.1f} s")
        except BaseException as e:  # noqa: BLE001 (any failure, an engine's included, is shown in the panel)
            self.error = e
            self._set_state("error", f"error: {headline(e)}", detail=str(e))
        else:  # finished, a Stop that came after every rank had finished included
            self.result = result
            late = " (Stop came after the run had finished)" if self._stop.is_set() else ""
            try:
                self._all_finished()
                self._show(name, result)
            except Exception as e:  # noqa: BLE001 - the run finished; its results view failing must not hang Run
                self.error = e
                self._set_state("error", f"finished in {time.perf_counter() - start:.1f} s, but its results could not "
                                f"be shown: {headline(e)}", detail=str(e))
            else:
                self._set_state("done", f"done in {time.perf_counter() - start:.1f} s{late}")
        finally:
            self._refresh_history()

    def _refresh_history(self) -> None:
        try:
            self.history.refresh()
        except Exception as e:  # noqa: BLE001 - an unreadable history must not hide the run's own outcome
            self.history.header.value = f"<i>run history unreadable: {html.escape(str(e))}</i>"

    # -- tuning ------------------------------------------------------------------------------------------
    def tune(self, params: dict, trials: int, *, metric: str, group: int = 1, storage=None, **options):
        """Tune the selected application over ``params`` (see :class:`hpcai.tune.Tuner`) on the panel's engines
        in groups of ``group``, every other field as set in the form; the study's live view (trials, best so
        far, intermediate curves, pruned and failed counts) shows in the panel and Stop hands out no more
        trials. ``storage`` (default: ``tune.journal`` in the application's results folder) resumes a study.
        Returns the Tuner (``best_params``, ``plot()``), which runs in the background (:meth:`wait`)."""
        from ..tune import Tuner
        from .tune_view import TuneView
        with self._lock:
            if self.state in ("starting", "running"):
                raise RuntimeError(f"the panel is {self.state}: wait() for it or stop() it first")
            if not self._validate():
                raise ValueError(self.validation.value.split("cannot run: ", 1)[-1].split("</span>")[0])
            name, n = self.app.value, self.engine_count()
            fixed = {k: v for k, v in self.values().items() if k not in params and k != "output_dir"}
            if storage is None:
                os.makedirs(os.path.join(self.output_dir, name), exist_ok=True)
                storage = os.path.join(self.output_dir, name, "tune.journal")
            tuner = Tuner(name, params, metric=metric, fixed=fixed, engines=self._engines_of(n) if n else 0,
                          group=group, storage=storage, **options)
            view = TuneView(tuner)
            previous, self.study.children = self.study.children, [view.widget]
            for widget in previous:
                widget.close()
            self.study.layout.display = None
            self.tuner, self._view, self.result, self.error = tuner, view, None, None
            self._stop.clear()
            label = f"tuning {name}: {trials} trials" + (f" on {n} MPI engines in groups of {group}" if n else
                                                         " in this kernel")
            self._set_state("running", label)
            self._thread = threading.Thread(target=self._tune_job, args=(tuner, view, trials), daemon=True,
                                            name="hpcai-panel-tune")
            self._thread.start()
            return tuner

    def _tune_job(self, tuner, view, trials: int) -> None:
        start = time.perf_counter()
        try:
            tuner.start(trials)
            while tuner.running:
                if self._stop.wait(0.2):
                    tuner.stop()  # no new trials; the running ones finish
                    tuner.wait()
                    break
            tuner.wait()
        except BaseException as e:  # noqa: BLE001 (shown in the panel, as a run's error is)
            self.error = e
            self._set_state("error", f"error: {headline(e)}", detail=str(e))
        else:
            c, best = tuner.counts(), tuner.best_value
            what = "stopped" if self._stop.is_set() else "done"
            self._set_state(what, f"{what} in {time.perf_counter() - start:.1f} s: {c['COMPLETE']} complete, "
                            f"{c['PRUNED']} pruned, {c['FAIL']} failed; best {tuner.metric} "
                            + ("-" if best is None else f"{best:.4g} with {tuner.best_params}"))
        finally:
            view.refresh()

    def _on_progress(self, snapshots: list) -> None:
        if self.state == "starting":  # the engines are up and the application has begun
            self._set_state("running", self._running)
        reporting = [s for s in snapshots if s.get("total") or s.get("finished") or s.get("overall")]
        self.progress.value = (sum(s.get("overall", s.get("fraction", 0.0)) for s in reporting) / len(reporting)
                               if reporting else 0.0)
        lines = [f"{'rank %d: ' % r if len(snapshots) > 1 else ''}{html.escape(s['phase'])}"
                 f"{' %d/%d' % (s['done'], s['total']) if s.get('total') else ''}"
                 f"{' &middot; ' + html.escape(s['message']) if s.get('message') else ''}"
                 for r, s in enumerate(snapshots) if s]
        self.progress_text.value = "<br>".join(lines)
        self.timing.value = self._timing(snapshots)
        self._last = snapshots
        now = time.perf_counter()
        final = bool(snapshots) and all(s.get("finished") for s in snapshots)
        self._finished = final
        if not any(s.get("losses") for s in snapshots):
            return  # nothing to plot yet: the first loss is plotted as soon as it comes
        if (now - self._plotted >= PLOT_EVERY or final) and (final or not self._rendering.is_set()):
            # rendered in a thread of its own: not on the application's thread when it runs in this kernel
            self._plotted = now
            self._rendering.set()
            threading.Thread(target=self._render, args=(snapshots, next(self._renders)), daemon=True,
                             name="hpcai-plot").start()

    def _all_finished(self) -> None:
        """The run returned: every rank is done, whatever its last report said (a rank's last words, e.g.
        "waiting for the learners", may be all that reached the panel)."""
        last = self._last
        if last and not all(s.get("finished") for s in last):
            self._on_progress([{**s, "finished": True, "done": s.get("total", 0), "fraction": 1.0, "overall": 1.0,
                                "eta": 0.0, "message": s.get("message", "") if s.get("finished") else "done"}
                               if s else s for s in last])

    @staticmethod
    def _timing(snapshots: list) -> str:
        """``elapsed 12 s · 35.2 steps/s · about 40 s left``: the slowest rank's view of the run."""
        known = [s for s in snapshots if s]
        if not known:
            return ""
        elapsed = max(s.get("elapsed", 0.0) for s in known)
        parts = [f"elapsed {duration(elapsed)}"]
        rates = [s["rate"] for s in known if s.get("rate")]
        if rates and not all(s.get("finished") for s in known):
            parts.append(f"{min(rates):.3g} steps/s")
        etas = [s.get("eta") for s in known]
        if all(s.get("finished") for s in known):
            parts.append("finished")
        elif etas and all(e is not None for e in etas):
            parts.append(f"about {duration(max(etas))} left")
        return "<span class='hpcai-timing-text'>" + " &middot; ".join(parts) + "</span>"

    def _render(self, snapshots, number: int) -> None:
        """The live plot of ``snapshots``, shown unless a later report's plot is on show already (renders run
        in threads of their own and may end out of order) or it belongs to an earlier run."""
        try:
            png = loss_png(snapshots)
            with self._lock:
                if png is not None and number > max(self._shown, self._floor):
                    self._shown = number
                    size = png_size(png)
                    if size:  # drawn at its own size: a flex box would stretch it
                        self.live.layout.width, self.live.layout.height = f"{size[0]}px", f"{size[1]}px"
                    self.live.value = png
                    self.live.layout.display = None
        finally:
            self._rendering.clear()

    def _show(self, name: str, result) -> None:
        w = _widgets()
        rows = []
        for group, items in metric_groups(APPS.get(name), result.metrics).items():
            rows.append(f"<tr><th colspan='2' style='text-align:left;padding-top:0.4em'>{html.escape(group)}</th></tr>")
            rows += [f"<tr><td style='padding:0 1em'>{html.escape(k)}</td><td>{_format(v, unit)}</td></tr>"
                     for k, v, unit in items]
        self.metrics.value = f"<table class='hpcai-metrics'>{''.join(rows)}</table>"
        figures = [self._figure(w, name, path) for name, path in result.figures.items()]
        previous, self.figures.children = self.figures.children, figures
        for widget in previous:
            _close_tree(widget)
        self.progress.value = 1.0
        self.results.layout.display = None

    @staticmethod
    def _figure(w, name: str, path: str):
        """One figure: drawn at its own aspect (at most THUMBNAIL px wide), a button showing it full size, and
        where it was saved."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            return w.HTML(f"<i>figure {html.escape(name)} not readable here: {html.escape(str(e))}</i>")
        size = png_size(data) or (THUMBNAIL, THUMBNAIL)
        scale = min(1.0, THUMBNAIL / size[0])
        small = (f"{round(size[0] * scale)}px", f"{round(size[1] * scale)}px")
        image = w.Image(value=data, format="png", width=size[0], height=size[1],
                        layout=w.Layout(width=small[0], height=small[1], object_fit="contain"))
        image.add_class("hpcai-figure")
        enlarge = w.ToggleButton(value=False, description="full size", icon="expand", disabled=scale == 1.0,
                                 tooltip=f"show {name} at {size[0]}x{size[1]} px",
                                 layout=w.Layout(width="100px", flex="0 0 auto"))
        enlarge.add_class("hpcai-enlarge")

        def toggle(change):
            image.layout.width, image.layout.height = (f"{size[0]}px", f"{size[1]}px") if change["new"] else small
            enlarge.description = "smaller" if change["new"] else "full size"
            box.layout.width = image.layout.width
        enlarge.observe(toggle, names="value")
        where = w.HTML(f"<span style='font-size:smaller;word-break:break-all'>{html.escape(name)} saved as "
                       f"<code>{html.escape(shown_path(path))}</code></span>")
        where.add_class("hpcai-figure-path")
        box = w.VBox([image, w.HBox([enlarge, where])], layout=w.Layout(margin="0 8px 8px 0", width=small[0]))
        box.add_class("hpcai-figure-box")
        return box

    def _set_state(self, state: str, text: str | None = None, detail: str | None = None) -> None:
        colours = {"error": "#b00", "done": "#070", "stopped": "#a60"}
        self.state = state
        body = html.escape(text or state)
        if detail:  # the full report, folded: the headline says what went wrong
            body += (f"<details class='hpcai-error-detail'><summary>full report (tracebacks)</summary>"
                     f"<pre style='white-space:pre-wrap;max-height:20em;overflow:auto'>{html.escape(detail)}</pre>"
                     f"</details>")
        self.status.value = f"<span style='color:{colours.get(state, '#333')}'>{body}</span>"
        busy = state in ("starting", "running")
        self.stop_button.disabled = not busy
        self.run_button.disabled = busy
        for widget in (self.app, self.engines, *self.top.values(), *self.fields.values()):
            widget.disabled = busy
        if not busy:
            self._validate()

    def stop(self) -> None:
        """Ask the running job to stop (what the Stop button does). A run whose ranks have all finished is
        not interrupted: it ends as it would have, its results shown."""
        if self.state in ("starting", "running"):
            self._stop.set()
            self.status.value = ("<span style='color:#070'>finished: collecting the results...</span>" if
                                 self._finished else "<span style='color:#a60'>stopping...</span>")

    def wait(self, timeout: float | None = None) -> str:
        """Block until the current run ends (or ``timeout`` s pass); returns the state."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.state

    def close(self) -> None:
        """Stop a running job and the engines, and close the widgets."""
        self.stop()
        self.wait(60)
        if self._engines is not None:
            self._engines.stop_sync()
            self._engines = None
        if self._view is not None:
            self._view.close()
        self.history.close()
        _close_tree(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self):
        return f"Panel(app={self.app.value!r}, engines={self.engines.value!r}, state={self.state!r})"

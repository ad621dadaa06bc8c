"""The control panel: pick an application, a precision, an optimizer, a parallel strategy and engines; Run, Stop.

Everything it offers is read from registries and dataclasses, so a new application, policy or optimizer
appears without a change here: applications from :data:`hpcai.apps.APPS`; a Config field's choices from
its ``metadata["choices"]`` (else the precision / optimizer registries); the application's sizes from the
remaining Config fields, one input each. The combination is validated by the Config as it changes, so Run
is only offered for something that can run, and the reason is shown when it cannot.

Run starts (or reuses) ipyparallel MPI engines -- or runs in this kernel with 0 engines -- in a worker
thread, so the notebook stays responsive: the progress bar and the live loss plot follow what the ranks
publish; then the results view shows the metrics and the application's figures. An error on any engine
appears with that engine's message. Stop interrupts the run (engines get SIGINT; a rank stuck in MPI is
ended by the engines' watchdog and fresh engines are started on the next Run).
"""
from __future__ import annotations

import contextlib
import dataclasses
import html
import os
import threading
import time

from .. import amp, optim
from ..apps import APPS, Stopped, config_fields
from ..runner import ensure_running, make_config, run_app
from .plots import loss_png

TOP = ("precision", "optimizer", "strategy")  # fields shown as the panel's own dropdowns, not among the sizes
HIDDEN = ("output_dir",)                      # fields the panel sets itself
REGISTRIES = {"precision": tuple(amp.POLICIES), "optimizer": tuple(optim.OPTIMIZERS)}
PLOT_EVERY = 1.0  # seconds between live-plot renders
MAX_ENGINES = 1024


def _widgets():
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("the control panel needs ipywidgets: pip install 'hpcai[notebook]'") from None
    return ipywidgets


def _choices(spec):
    return spec.choices or REGISTRIES.get(spec.name)


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _headline(error) -> str:
    """One line for the status: the exception, or for an EngineError the failing ranks' last lines."""
    failures = getattr(error, "failures", None)
    if failures:
        last = {r: next((line.strip() for line in reversed(tb.splitlines()) if line.strip()), "")
                for r, tb in failures.items()}
        if len(set(last.values())) == 1:
            return f"rank(s) {sorted(last)}: {next(iter(last.values()))}"
        return "; ".join(f"rank {r}: {line}" for r, line in sorted(last.items()))
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _close_tree(widget) -> None:
    """Close a widget and everything inside it (each holds a comm to the front end)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


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
        self._lock = threading.RLock()
        self.app = w.Dropdown(options=[(name, name) for name in APPS], value=app, description="application")
        self.about = w.HTML()
        self.top = {name: w.Dropdown(description={"strategy": "parallel"}.get(name, name)) for name in TOP}
        self.engines = w.BoundedIntText(value=engines, min=0, max=MAX_ENGINES, description="engines",
                                        tooltip="MPI engines (ipyparallel); 0 runs in this kernel")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.sizes = w.GridBox(layout=w.Layout(grid_template_columns="repeat(3, 1fr)"))
        self.validation = w.HTML()
        self.status = w.HTML()
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="50%"))
        self.progress_text = w.HTML()
        self.live = w.Image(format="png", layout=w.Layout(display="none", max_width="520px"))
        self.metrics = w.HTML()
        self.figures = w.Box(layout=w.Layout(flex_flow="row wrap"))
        self.results = w.VBox([w.HTML("<b>Results</b>"), self.metrics, self.figures], layout=w.Layout(display="none"))
        self.study = w.VBox(layout=w.Layout(display="none"))  # a study's live view (:meth:`tune`)
        self.tuner = self._view = None
        self.fields: dict = {}
        for widget, cls in [(self.app, "app"), *[(d, n) for n, d in self.top.items()], (self.engines, "engines"),
                            (self.run_button, "run"), (self.stop_button, "stop"), (self.status, "status"),
                            (self.validation, "validation"), (self.progress, "progress"), (self.live, "live"),
                            (self.results, "results"), (self.sizes, "sizes"), (self.study, "study")]:
            widget.add_class(f"hpcai-{cls}")
        sizes = w.Accordion([self.sizes])
        sizes.set_title(0, "sizes and settings")
        self.widget = w.VBox([
            w.HTML("<h3 style='margin:0'>hpcai</h3>"), w.HBox([self.app, self.about]),
            w.HBox(list(self.top.values())), w.HBox([self.engines, self.run_button, self.stop_button]), sizes,
            self.validation, self.status, w.HBox([self.progress, self.progress_text]), self.live, self.study,
            self.results])
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
        with self._quiet():
            for name, dropdown in self.top.items():
                if name in fields:
                    dropdown.options = _choices(fields[name])
                    dropdown.value = defaults[name]
                dropdown.layout.display = None if name in fields else "none"
        previous, self.fields = list(self.fields.values()), {}
        for name, f in fields.items():
            if name in TOP or name in HIDDEN:
                continue
            value, kind, choices = defaults[name], f.kind, _choices(f)
            style = {"description_width": "initial"}
            if choices:
                widget = w.Dropdown(options=choices, value=value, description=name, style=style)
            elif kind is bool:
                widget = w.Checkbox(value=bool(value), description=name, style=style)
            elif f.optional:
                widget = w.Text(value="" if value is None else str(value), placeholder="auto", description=name,
                                style=style)
            elif kind is int:
                widget = w.IntText(value=value, description=name, style=style)
            elif kind is float:
                widget = w.FloatText(value=value, description=name, style=style)
            else:
                widget = w.Text(value=str(value), description=name, style=style)
            widget.add_class(f"hpcai-field-{name}")
            widget.observe(lambda change: self._validate(), names="value")
            self.fields[name] = widget
        self.sizes.children = list(self.fields.values())
        for widget in previous:  # the previous application's inputs, now off the page
            widget.close()
        self._validate()

    @contextlib.contextmanager
    def _quiet(self):
        """No validation while several widgets change together."""
        self._building = True
        try:
            yield
        finally:
            self._building = False

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
        if self._building:
            return False
        try:
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
            self.progress.value, self.progress_text.value, self._plotted = 0.0, "", 0.0
            n = self.engines.value
            self._set_state("starting" if n else "running",
                            f"starting {n} MPI engines" if n and not self._engines_ready(n) else None)
            self._thread = threading.Thread(target=self._job, args=(self.app.value, config, n), daemon=True,
                                            name="hpcai-panel-run")
            self._thread.start()
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
        try:
            engines = ensure_running(self._engines_of(n)) if n else 0
            if self._stop.is_set():
                raise Stopped("stopped before the run began")
            self._set_state("running", f"running {name} on {n} MPI engine(s)" if n else f"running {name} in this kernel")
            result = run_app(name, config, engines=engines, verbose=0, progress=self._on_progress, stop=self._stop)
        except Stopped:
            self._set_state("stopped", f"stopped after {time.perf_counter() - start:.1f} s")
        except BaseException as e:  # noqa: BLE001 (any failure, an engine's included, is shown in the panel)
            self.error = e
            self._set_state("error", f"error: {_headline(e)}", detail=str(e))
        else:
            self.result = result
            self._show(result)
            self._set_state("done", f"done in {time.perf_counter() - start:.1f} s")

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
            name, n = self.app.value, self.engines.value
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
            self._set_state("error", f"error: {_headline(e)}", detail=str(e))
        else:
            c, best = tuner.counts(), tuner.best_value
            what = "stopped" if self._stop.is_set() else "done"
            self._set_state(what, f"{what} in {time.perf_counter() - start:.1f} s: {c['COMPLETE']} complete, "
                            f"{c['PRUNED']} pruned, {c['FAIL']} failed; best {tuner.metric} "
                            + ("-" if best is None else f"{best:.4g} with {tuner.best_params}"))
        finally:
            view.refresh()

    def _on_progress(self, snapshots: list) -> None:
        reporting = [s for s in snapshots if s.get("total")]
        self.progress.value = sum(s["fraction"] for s in reporting) / len(reporting) if reporting else 0.0
        lines = [f"{'rank %d: ' % r if len(snapshots) > 1 else ''}{html.escape(s['phase'])}"
                 f"{' %d/%d' % (s['done'], s['total']) if s.get('total') else ''}"
                 f"{' &middot; ' + html.escape(s['message']) if s.get('message') else ''}"
                 for r, s in enumerate(snapshots) if s]
        self.progress_text.value = "<br>".join(lines)
        now = time.perf_counter()
        final = all(s.get("finished") for s in snapshots)
        if (now - self._plotted >= PLOT_EVERY or final) and (final or not self._rendering.is_set()):
            # rendered in a thread of its own: not on the application's thread when it runs in this kernel
            self._plotted = now
            self._rendering.set()
            threading.Thread(target=self._render, args=(snapshots,), daemon=True, name="hpcai-plot").start()

    def _render(self, snapshots) -> None:
        try:
            png = loss_png(snapshots)
            if png is not None:
                self.live.value = png
                self.live.layout.display = None
        finally:
            self._rendering.clear()

    def _show(self, result) -> None:
        w = _widgets()
        rows = "".join(f"<tr><td style='padding-right:1em'>{html.escape(k)}</td><td>{_format(v)}</td></tr>"
                       for k, v in result.metrics.items())
        self.metrics.value = f"<table class='hpcai-metrics'>{rows}</table>"
        images = []
        for name, path in result.figures.items():
            try:
                with open(path, "rb") as f:
                    image = w.Image(value=f.read(), format="png",
                                    layout=w.Layout(max_width="440px", margin="0 8px 8px 0"))
            except OSError as e:
                images.append(w.HTML(f"<i>figure {html.escape(name)} not readable here: {html.escape(str(e))}</i>"))
                continue
            image.add_class("hpcai-figure")
            images.append(image)
        previous, self.figures.children = self.figures.children, images
        for widget in previous:
            widget.close()
        self.progress.value = 1.0
        self.results.layout.display = None

    def _set_state(self, state: str, text: str | None = None, detail: str | None = None) -> None:
        colours = {"error": "#b00", "done": "#070", "stopped": "#a60"}
        self.state = state
        body = html.escape(text or state)
        if detail:
            body += f"<pre style='white-space:pre-wrap;max-height:20em;overflow:auto'>{html.escape(detail)}</pre>"
        self.status.value = f"<span style='color:{colours.get(state, '#333')}'>{body}</span>"
        busy = state in ("starting", "running")
        self.stop_button.disabled = not busy
        self.run_button.disabled = busy
        for widget in (self.app, self.engines, *self.top.values(), *self.fields.values()):
            widget.disabled = busy
        if not busy:
            self._validate()

    def stop(self) -> None:
        """Ask the running job to stop (what the Stop button does)."""
        if self.state in ("starting", "running"):
            self._stop.set()
            self.status.value = "<span style='color:#a60'>stopping...</span>"

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
        _close_tree(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self):
        return f"Panel(app={self.app.value!r}, engines={self.engines.value}, state={self.state!r})"

"""The control panel without a browser: widgets built from the registries, validation, runs, stop, errors.

The same panel in JupyterLab, clicked in a real browser, is tests/test_browser.py.
"""
import contextlib
import html
import os
import dataclasses
import threading
import time

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("sklearn")

from hpcai import amp, optim  # noqa: E402
from hpcai.apps import APPS, digits  # noqa: E402
from hpcai.parallel import METHODS  # noqa: E402
from hpcai.apps.progress import Progress  # noqa: E402
from hpcai.ui import Panel  # noqa: E402
from hpcai.ui import panel as panel_module  # noqa: E402
from hpcai.ui.panel import HIDDEN, TOP, label_text, metric_groups, png_size  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _until(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_dropdowns_come_from_the_registries(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path))
    assert list(panel.app.options) == [(name, name) for name in APPS]
    assert panel.top["precision"].options == tuple(amp.POLICIES)
    assert panel.top["optimizer"].options == tuple(optim.OPTIMIZERS)
    panel.top["optimizer"].value = "sgd"  # with adam the asynchronous strategies are not offered
    assert panel.top["strategy"].options == tuple(METHODS)
    assert panel.state == "idle" and not panel.run_button.disabled and panel.stop_button.disabled
    for name, app in APPS.items():  # every application: one input per remaining Config field
        panel.app.value = name
        fields = {f.name for f in dataclasses.fields(app.config)}
        assert set(panel.fields) == fields - set(TOP) - set(HIDDEN)
        for top, dropdown in panel.top.items():
            assert (dropdown.layout.display != "none") == (top in fields)
    panel.app.value = "climate_sr"
    assert panel.fields["codec"].options == ("truncate", "block", "sz3", "zfp")  # a Config field's declared choices
    assert panel.config() == APPS["climate_sr"].config()
    panel.close()


def test_initial_values_and_bad_arguments(tmp_path):
    panel = Panel(app="digits", engines=0, epochs=3, precision="mixed-fp16", output_dir=str(tmp_path))
    assert panel.fields["epochs"].value == 3 and panel.top["precision"].value == "mixed-fp16"
    assert panel.config().epochs == 3
    panel.close()
    with pytest.raises(ValueError, match="app: expected one of"):
        Panel(app="nope")
    with pytest.raises(ValueError, match="engines"):
        Panel(engines=-1)
    with pytest.raises(ValueError, match="no field"):
        Panel(app="digits", epoch=3)
    with pytest.raises(ValueError, match="precision: expected one of"):
        Panel(precision="fp8")  # the Config's own check, before any widget exists
    with pytest.raises(ValueError, match="engines"):
        Panel(engines=2000)
    with pytest.raises(TypeError, match="output_dir"):
        Panel(output_dir=3)


def test_validation_follows_every_change(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path))
    panel.top["optimizer"].value = "sgd"
    panel.top["strategy"].value = "rma"
    assert not panel.run_button.disabled and panel.validation.value == ""
    panel.fields["lr"].value = "fast"
    assert panel.run_button.disabled and "lr: expected float" in panel.validation.value
    panel.fields["lr"].value = ""  # empty: the optimizer's default
    assert panel.config().lr is None and not panel.run_button.disabled
    panel.fields["lr"].value = "0.05"
    assert panel.config().lr == 0.05
    panel.fields["epochs"].value = 0
    assert panel.run_button.disabled and "epochs" in panel.validation.value
    panel.close()


def test_local_run_shows_progress_results_and_figures(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path), epochs=3)
    panel.run()
    assert panel.wait(120) == "done", panel.status.value
    assert panel.progress.value == 1.0 and "done in" in panel.status.value
    assert panel.results.layout.display is None and "test_accuracy" in panel.metrics.value
    assert panel.result.metrics["test_accuracy"] > 0.85
    images = [bytes(c.children[0].value) for c in panel.figures.children]
    assert len(images) == 2 and all(i.startswith(PNG) for i in images)
    assert bytes(panel.live.value).startswith(PNG) and panel.live.layout.display is None
    width, height = png_size(bytes(panel.live.value))  # the live plot too, at its own size
    assert (panel.live.layout.width, panel.live.layout.height) == (f"{width}px", f"{height}px")
    assert not panel.run_button.disabled and panel.stop_button.disabled and not panel.app.disabled
    assert list(tmp_path.glob("digits/*/loss.png"))  # each run gets its own folder
    panel.top["precision"].value = "bf16"  # a second run, to compare
    panel.run()
    assert panel.wait(120) == "done", panel.status.value
    runs = panel.history.shown()           # the run history: both runs, newest first, in the panel's folder
    assert [r["status"] for r in runs] == ["finished", "finished"]
    assert [r["config"]["precision"] for r in runs] == ["bf16", "fp32"]
    panel.history.select(runs[1]["id"])    # the first run's figures come back
    assert panel.history.selected["id"] == runs[1]["id"] and panel.history.figures.children
    panel.close()


def test_stop_interrupts_a_local_run(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path), epochs=500)
    panel.run()
    _until(lambda: panel.progress.value > 0)
    assert panel.app.disabled and panel.run_button.disabled and not panel.stop_button.disabled
    panel.run_button.click()  # a second Run while running is ignored
    panel.stop_button.click()
    assert panel.wait(60) == "stopped" and "stopped after" in panel.status.value
    assert panel.result is None and not panel.run_button.disabled
    panel.close()


def test_engines_run_stop_restart_error_and_cleanup(tmp_path):
    """One set of engines for all of it: a run, a stop, a run on restarted engines, an engine's error."""
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("ipyparallel")
    import procs
    panel = Panel(engines=2, output_dir=str(tmp_path), epochs=3)
    seen = set()  # psutil.Process objects: a PID reused after one of ours ended is never mistaken for it

    def remember():
        for pid in panel._engines.pids if panel._engines else ():
            with contextlib.suppress(psutil.Error):
                seen.add(psutil.Process(pid))
    try:
        panel.top["optimizer"].value = "sgd"
        panel.top["strategy"].value = "rma"
        panel.top["precision"].value = "mixed-bf16"
        panel.run()
        assert panel.state == "starting" and "starting 2 MPI engines" in panel.status.value
        assert panel.wait(180) == "done", panel.status.value
        assert panel.result.metrics["workers"] == 2 and panel.result.metrics["strategy"] == "rma"
        assert "rank 1:" in panel.progress_text.value  # both ranks reported
        remember()
        assert seen and all(map(procs.alive, seen))

        # Stop pressed once every rank has finished: the run is done, results and figures kept, engines kept
        stopped, relay, pids = [], panel._on_progress, set(panel._engines.pids)

        def stop_when_finished(snapshots):
            relay(snapshots)
            if panel._finished and not stopped:
                stopped.append(True)
                panel.stop()
        panel._on_progress = stop_when_finished
        panel.run()
        assert panel.wait(180) == "done", panel.status.value
        panel._on_progress = relay
        assert stopped and "after the run had finished" in panel.status.value
        assert panel.results.layout.display is None and len(panel.figures.children) == 2
        assert all(os.path.isfile(path) for path in panel.result.figures.values())
        assert panel._engines_ready(2) and set(panel._engines.pids) == pids  # not restarted

        panel.top["strategy"].value = "sync"
        panel.fields["epochs"].value = 2000
        panel.run()
        _until(lambda: panel.progress.value > 0.001, 120)
        panel.stop()
        assert panel.wait(120) == "stopped", panel.status.value

        panel.fields["epochs"].value = 2
        panel.run()  # the interrupted job may have ended: fresh engines are started
        assert panel.wait(180) == "done", panel.status.value
        remember()

        panel.app.value = "climate_sr"
        panel.fields["dt"].value = "3000"  # unstable: the solver on the engines refuses it
        panel.run()
        assert panel.wait(180) == "error"
        assert "rank(s) [0, 1]: ValueError: dt: 3000 s exceeds the stable limit" in panel.status.value
        assert "rank 0 raised" in panel.status.value  # the engines' own tracebacks, below the headline
        remember()
    finally:  # engines left running would slow every later test
        remember()
        panel.close()
    left = procs.collect(lambda: seen, grace=0)  # close() waited for them already; kills what is left
    assert not left, f"processes left after close() (killed now): {left}"


def test_panel_displays_as_a_widget(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path))
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "hpcai-panel" in panel.widget._dom_classes
    panel.close()


def test_engine_options_reach_the_engines_and_their_errors_the_panel(tmp_path):
    with pytest.raises(TypeError, match="engine_options"):
        Panel(engine_options="slurm")
    panel = Panel(engines=2, output_dir=str(tmp_path), engine_options={"launcher": "lsf"}, epochs=1)
    panel.run()
    assert panel.wait(60) == "error" and "launcher" in panel.status.value
    assert not panel.run_button.disabled  # ready for another try
    panel.close()


def test_engines_that_fail_to_start_are_a_failed_run_in_the_history(tmp_path):
    from hpcai import history
    mpiexec = tmp_path / "mpiexec"
    mpiexec.write_text("#!/bin/sh\necho 'no MPI on this node' >&2\nexit 3\n")
    mpiexec.chmod(0o755)
    panel = Panel(engines=2, output_dir=str(tmp_path), engine_options={"mpiexec": str(mpiexec), "timeout": 60},
                  epochs=1)
    try:
        panel.run()
        assert panel.wait(120) == "error", panel.status.value
        (run,) = history.load(tmp_path)
        assert run["status"] == "failed" and run["app"] == "digits" and run["ranks"] == 2 and run["error"]
    finally:
        panel.close()


def test_tune_from_the_panel_shows_the_study_live_and_resumes(tmp_path):
    """panel.tune: a study of the selected application with the form's other fields fixed; its view is in
    the panel, the result in the status line, and a second call on the same file resumes the study."""
    pytest.importorskip("optuna")
    panel = Panel(app="digits", engines=0, output_dir=str(tmp_path), epochs=2, hidden=16)
    try:
        tuner = panel.tune({"lr": (1e-3, 1e-1, "log")}, 3, metric="test_accuracy", pruner="none", seed=1)
        assert panel.state == "running" and "tuning digits: 3 trials in this kernel" in panel.status.value
        assert panel.wait(300) == "done", panel.status.value
        assert "3 complete" in panel.status.value and "best test_accuracy" in panel.status.value
        assert panel.study.layout.display is None and "hpcai-tune" in panel.study.children[0]._dom_classes
        assert "3 complete" in panel._view.header.value
        assert tuner.fixed["epochs"] == 2 and tuner.fixed["hidden"] == 16 and "lr" not in tuner.fixed
        assert os.path.isfile(tmp_path / "digits" / "tune.journal")
        again = panel.tune({"lr": (1e-3, 1e-1, "log")}, 4, metric="test_accuracy", pruner="none", seed=1)
        assert panel.wait(300) == "done" and again.counts()["COMPLETE"] == 4  # 3 kept, 1 new
        with pytest.raises(ValueError, match="lr"):
            panel.tune({"lr": (1e-3, 1e9)}, 2, metric="test_accuracy")
    finally:
        panel.close()


def test_choices_that_cannot_run_are_not_offered_and_say_why(tmp_path):
    """digits: with adam the asynchronous strategies are not offered; with rma, neither adam nor the precisions
    it cannot train in -- mixed-fp16 for its loss scaling -- and each reason is on hover and in the note."""
    panel = Panel(engines=0, output_dir=str(tmp_path))
    assert panel.top["strategy"].options == ("sync",)  # adam: no asynchronous strategy
    assert "plain SGD" in panel.top["strategy"].tooltip and "strategy <span" in panel.unavailable.value
    assert "<b>strategy rma</b>: optimizer: the asynchronous strategy 'rma' applies plain SGD" in \
        html.unescape(panel.unavailable.value)
    panel.top["optimizer"].value = "sgd"
    assert panel.top["strategy"].options == tuple(METHODS)
    panel.top["precision"].value = "mixed-fp16"
    assert panel.top["strategy"].options == ("sync",)  # rma cannot scale the loss
    assert "loss scaling" in panel.refused()["strategy"]["rma"]
    panel.top["precision"].value = "fp32"
    panel.top["strategy"].value = "rma"
    assert panel.top["optimizer"].options == ("sgd",)
    assert "mixed-fp16" not in panel.top["precision"].options and "mixed-bf16" in panel.top["precision"].options
    reason = panel.refused()["precision"]["mixed-fp16"]
    assert "loss scaling" in reason and "keeps full-precision" not in reason
    assert "mixed-fp16 needs dynamic loss scaling" in panel.top["precision"].tooltip
    assert "rounds the weights themselves to fp16" in panel.refused()["precision"]["fp16"]
    with pytest.raises(ValueError, match="mixed-fp16 needs dynamic loss scaling"):  # the same rule validates
        digits.Config(strategy="rma", optimizer="sgd", precision="mixed-fp16").validate()
    assert not panel.run_button.disabled and panel.config().strategy == "rma"
    panel.top["strategy"].value = "sync"  # everything offered again
    assert panel.top["precision"].options == tuple(amp.POLICIES) and panel.unavailable.value == ""
    panel.close()


@pytest.mark.parametrize("text", ["2.5", "1e2", "5000", "-3", "", "two", "0x2"])
def test_engines_box_refuses_what_is_not_a_whole_number_in_range(tmp_path, text):
    panel = Panel(engines=0, output_dir=str(tmp_path))
    panel.engines.value = text
    assert panel.run_button.disabled and panel.run() is None
    assert "engines: expected a whole number from 0 to 1024" in panel.validation.value
    assert panel.engines.value == text  # kept as typed, not turned into another number
    with pytest.raises(ValueError, match="engines"):
        panel.engine_count()
    panel.engines.value = " 3 "
    assert panel.engine_count() == 3 and not panel.run_button.disabled and panel.validation.value == ""
    panel.close()


def test_labels_are_words_with_units_and_help_on_hover(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path))
    declared = {f.name: f for f in dataclasses.fields(digits.Config)}
    for name, widget in panel.fields.items():
        unit = declared[name].metadata.get("unit")
        assert label_text(widget) == name.replace("_", " ") + (f" ({unit})" if unit else "")
        assert declared[name].metadata.get("help", "") in widget.tooltip
        assert html.escape(widget.tooltip, quote=True) in widget.description  # the label's hover title
    assert label_text(panel.fields["batch_size"]) == "batch size (images)"
    assert label_text(panel.top["strategy"]) == "parallel"
    panel.app.value = "climate_sr"  # every application's fields, with or without help
    assert all("_" not in label_text(w) for w in panel.fields.values())
    panel.close()


def test_progress_snapshot_has_elapsed_rate_eta_and_one_bar_over_the_phases():
    progress = Progress()
    progress.plan(1, 3)
    progress.phase("simulation", 10)
    time.sleep(0.02)
    progress.update(5)
    snap = progress.snapshot()
    assert snap["fraction"] == 0.5 and snap["overall"] == pytest.approx(0.125)
    assert snap["elapsed"] > 0 and snap["rate"] > 0 and snap["eta"] > 0
    progress.phase("training", 4)
    progress.update(2)
    assert progress.snapshot()["overall"] == pytest.approx(0.25 + 0.75 * 0.5)
    progress.finish()
    snap = progress.snapshot()
    assert snap["overall"] == 1.0 and snap["eta"] == 0.0
    one = Progress()
    one.phase("training", 4)
    assert one.snapshot()["rate"] is None and one.snapshot()["eta"] is None  # nothing done yet: unknown
    one.update(1)
    assert one.snapshot()["overall"] == 0.25 and one.snapshot()["eta"] > 0
    with pytest.raises(ValueError, match="weights"):
        progress.plan(1, 0)


def test_panel_shows_elapsed_rate_eta_and_the_overall_bar(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path))
    snaps = [{"phase": "training", "done": 5, "total": 10, "fraction": 0.5, "overall": 0.75, "elapsed": 65.0,
              "rate": 2.0, "eta": 20.0, "message": "", "finished": False, "steps": [], "losses": []},
             {"phase": "simulation", "done": 1, "total": 4, "fraction": 0.25, "overall": 0.25, "elapsed": 64.0,
              "rate": 4.0, "eta": 30.0, "message": "", "finished": False, "steps": [], "losses": []}]
    panel._on_progress(snaps)
    assert panel.progress.value == pytest.approx(0.5)  # the ranks' overall fractions, not their phases'
    assert "elapsed 1 min 05 s" in panel.timing.value and "2 steps/s" in panel.timing.value
    assert "about 30 s left" in panel.timing.value
    panel.close()


def test_a_finished_run_shows_every_rank_finished(tmp_path, monkeypatch):
    """A rank whose last report reached the panel before its end ("waiting for the learners") is shown done."""
    panel = Panel(engines=0, output_dir=str(tmp_path), epochs=1)

    def run(name, config, **kw):
        kw["progress"]([{"phase": "training", "done": 3, "total": 3, "finished": True, "message": "accuracy 0.9"},
                        {"phase": "simulation", "done": 0, "total": 0, "message": "waiting for the learners"}])
        return digits.run(config, verbose=0)
    monkeypatch.setattr(panel_module, "run_app", run)
    panel.run()
    assert panel.wait(120) == "done", panel.status.value
    assert "waiting" not in panel.progress_text.value and "accuracy 0.9" in panel.progress_text.value
    assert "finished" in panel.timing.value and panel.progress.value == 1.0
    panel.close()


def test_live_plot_renders_are_applied_in_order(tmp_path, monkeypatch):
    """A render that ends after a later one (threads) does not replace it; an earlier run's render is dropped."""
    panel = Panel(engines=0, output_dir=str(tmp_path))
    monkeypatch.setattr(panel_module, "loss_png", lambda snapshots: snapshots[0]["png"])
    panel._render([{"png": PNG + b"new"}], 5)
    panel._render([{"png": PNG + b"old"}], 3)  # started before, ended after
    assert bytes(panel.live.value) == PNG + b"new"
    panel._render([{"png": PNG + b"newer"}], 6)
    assert bytes(panel.live.value) == PNG + b"newer"
    panel._floor = 10  # a new run began
    panel._render([{"png": PNG + b"stale"}], 7)
    assert bytes(panel.live.value) == PNG + b"newer"
    panel.close()


def test_the_first_loss_is_plotted_at_once(tmp_path):
    """A run's first report has no loss yet; it must not hold the first plot back a whole PLOT_EVERY (a default
    digits run on engines ended before its live plot appeared)."""
    panel = Panel(engines=0, output_dir=str(tmp_path))
    snap = {"phase": "training", "done": 0, "total": 100, "fraction": 0.0, "message": "", "finished": False,
            "steps": [], "losses": []}
    panel._on_progress([snap])
    panel._on_progress([{**snap, "done": 10, "fraction": 0.1, "steps": list(range(1, 11)), "losses": [1.0] * 10}])
    _until(lambda: bytes(panel.live.value).startswith(PNG), 30)
    assert panel.live.layout.display is None
    panel.close()


class _Engines:
    """Engines that run nothing: every rank reports its run finished, then the results take a while."""

    n, running = 2, True

    def __init__(self):
        self.interrupted = 0

    def run_sync(self, fn, *args, stream, on_data, label):
        on_data([{"progress": {"phase": "training", "finished": True}}] * 2)
        time.sleep(1.0)  # writing the figures
        return ["result", "result"]

    def interrupt_sync(self):
        self.interrupted += 1


def test_a_stop_after_every_rank_finished_does_not_interrupt_the_engines():
    from hpcai import runner
    engines, stop = _Engines(), threading.Event()
    result = runner._on_engines(engines, None, (), 0, lambda snapshots: stop.set(), stop, label="test")
    assert result == "result" and engines.interrupted == 0


def test_stop_after_finish_shows_the_results(tmp_path, monkeypatch):
    """In the panel: Stop pressed once every rank said finished -- the run is done, its results shown."""
    panel = Panel(engines=0, output_dir=str(tmp_path), epochs=1)

    def finishing(name, config, **kw):
        kw["progress"]([{"phase": "training", "done": 3, "total": 3, "finished": True, "message": "done"}])
        assert panel._finished
        panel.stop()
        assert "finished" in panel.status.value
        return digits.run(config, verbose=0)
    monkeypatch.setattr(panel_module, "run_app", finishing)
    panel.run()
    assert panel.wait(120) == "done", panel.status.value
    assert "after the run had finished" in panel.status.value and panel.results.layout.display is None
    assert panel.result is not None and len(panel.figures.children) == 2
    panel.close()


def test_results_figures_keep_their_aspect_enlarge_and_show_their_path(tmp_path):
    panel = Panel(engines=0, output_dir=str(tmp_path), epochs=2)
    panel.run()
    assert panel.wait(120) == "done", panel.status.value
    for box, (name, path) in zip(panel.figures.children, panel.result.figures.items()):
        image, (enlarge, where) = box.children[0], box.children[1].children
        width, height = png_size(bytes(image.value))
        shown = float(image.layout.width[:-2]), float(image.layout.height[:-2])
        assert shown[0] <= 440 and shown[0] / shown[1] == pytest.approx(width / height, rel=0.01)
        assert path in where.value and os.path.isfile(path)
        if width > 440:
            enlarge.value = True
            assert image.layout.width == f"{width}px" and image.layout.height == f"{height}px"
            enlarge.value = False
            assert float(image.layout.width[:-2]) == shown[0]
    assert "<th" in panel.metrics.value and "test_accuracy" in panel.metrics.value
    panel.close()


def test_metrics_are_grouped_with_units():
    class App:
        metric_info = {"raw_bytes": ("compression", "bytes"), "ratio": ("compression", "")}
    groups = metric_groups(App(), {"raw_bytes": 3 * 2**20, "ratio": 4.0, "test_accuracy": 0.9, "test_loss": 0.1,
                                   "seconds": 2.0})
    assert groups == {"compression": [("raw_bytes", 3 * 2**20, "bytes"), ("ratio", 4.0, "")],
                      "test": [("test_accuracy", 0.9, ""), ("test_loss", 0.1, "")], "run": [("seconds", 2.0, "")]}
    assert panel_module._format(3 * 2**20, "bytes") == "3 MiB" and panel_module._format(2.5, "s") == "2.5 s"


def test_an_engine_error_shows_its_headline_and_folds_the_tracebacks(tmp_path, monkeypatch):
    from hpcai.cluster import EngineError
    tb = "Traceback (most recent call last):\n  File 'x.py'\nValueError: dt: 3000 s exceeds the stable limit"

    def failing(name, config, **kw):
        raise EngineError("run_app('digits') failed: rank 0 raised\n" + tb, failures={0: tb, 1: tb})
    monkeypatch.setattr(panel_module, "run_app", failing)
    panel = Panel(engines=0, output_dir=str(tmp_path))
    panel.run()
    assert panel.wait(30) == "error"
    status = panel.status.value
    headline = "rank(s) [0, 1]: ValueError: dt: 3000 s exceeds the stable limit"
    assert headline in status and status.index(headline) < status.index("<details")
    assert "<details class='hpcai-error-detail'>" in status and "open" not in status.split("<details")[1][:40]
    assert "Traceback" in status.split("<details")[1]  # kept, folded
    panel.close()


def test_a_results_view_that_fails_leaves_the_panel_usable(tmp_path, monkeypatch):
    panel = Panel(engines=0, output_dir=str(tmp_path), epochs=1)

    def broken(name, result):
        raise ValueError("figure file unreadable")
    monkeypatch.setattr(panel, "_show", broken)
    panel.run()
    assert panel.wait(120) == "error", panel.status.value
    assert "finished in" in panel.status.value and "figure file unreadable" in panel.status.value
    assert panel.result is not None and not panel.run_button.disabled and panel.stop_button.disabled
    panel.close()

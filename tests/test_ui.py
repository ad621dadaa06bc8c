"""The control panel without a browser: widgets built from the registries, validation, runs, stop, errors.

The same panel in JupyterLab, clicked in a real browser, is tests/test_browser.py.
"""
import contextlib
import os
import dataclasses
import time

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("sklearn")

from hpcai import amp, optim  # noqa: E402
from hpcai.apps import APPS, digits  # noqa: E402
from hpcai.parallel import METHODS  # noqa: E402
from hpcai.ui import Panel  # noqa: E402
from hpcai.ui.panel import HIDDEN, TOP  # noqa: E402

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
    panel.top["strategy"].value = "rma"  # with adam: asynchronous strategies apply plain SGD
    assert panel.run_button.disabled and "optimizer" in panel.validation.value
    assert panel.run() is None  # refused, not started
    panel.top["optimizer"].value = "sgd"
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
    images = [bytes(c.value) for c in panel.figures.children]
    assert len(images) == 2 and all(i.startswith(PNG) for i in images)
    assert bytes(panel.live.value).startswith(PNG) and panel.live.layout.display is None
    assert not panel.run_button.disabled and panel.stop_button.disabled and not panel.app.disabled
    assert list(tmp_path.glob("digits/*/loss.png"))  # each run gets its own folder
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

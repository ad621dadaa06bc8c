"""Run history: real digits runs recorded by run_app (finished, failed, stopped), appends from several processes
that never interleave, a truncated line skipped with a warning, compare() showing only the differing settings,
and the history view re-loading a run's figures. About 10 s on 2 cores."""
import dataclasses
import json
import multiprocessing
import os
import threading
import time
import types
import warnings

import pytest

pytest.importorskip("sklearn")

from hpcai import __version__, history  # noqa: E402
from hpcai.apps import APPS, Stopped  # noqa: E402
from hpcai.runner import run_app  # noqa: E402

TINY = dict(epochs=1, hidden=16, verbose=0)  # ~0.5 s a run
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished digits runs (fp32 with adam, bf16 with sgd) recorded in one results folder."""
    folder = tmp_path_factory.mktemp("results")
    results = [run_app("digits", output_dir=str(folder / "fp32"), history=str(folder), **TINY),
               run_app("digits", output_dir=str(folder / "bf16"), history=str(folder), precision="bf16",
                       optimizer="sgd", **TINY)]
    return folder, results


def test_every_run_records_its_config_metrics_timings_and_paths(runs):
    folder, results = runs
    records = history.load(folder)
    assert [r["status"] for r in records] == ["finished", "finished"]
    first, second = records
    assert first["app"] == "digits" and first["version"] == __version__ and first["error"] is None
    assert first["config"]["precision"] == "fp32" and second["config"]["precision"] == "bf16"
    assert first["metrics"]["test_accuracy"] == results[0].metrics["test_accuracy"]
    assert first["engines"] == 0 and first["ranks"] == 1 and 0 < first["seconds"] < 60
    assert first["start"] <= second["start"] and first["id"] != second["id"]
    assert first["figures"] == results[0].figures and first["files"] == results[0].files
    with open(first["figures"]["loss"], "rb") as f:
        assert f.read(8) == PNG
    # inside the history's folder the paths are stored relative to it, so the folder can be moved
    stored = json.loads(open(folder / history.FILE).readline())
    assert stored["figures"] == {"loss": os.path.join("fp32", "loss.png"),
                                 "confusion": os.path.join("fp32", "confusion.png")}


def test_a_run_is_recorded_in_its_output_dir_unless_told_otherwise(tmp_path):
    run_app("digits", output_dir=str(tmp_path), **TINY)
    assert [r["status"] for r in history.load(tmp_path)] == ["finished"]
    run_app("digits", output_dir=str(tmp_path), history=False, **TINY)
    assert len(history.load(tmp_path)) == 1
    with pytest.raises(ValueError, match="^history: expected a folder"):
        run_app("digits", output_dir=str(tmp_path), history=3, **TINY)
    with pytest.raises(ValueError, match="^epochs: "):  # a Config that does not validate is no run
        run_app("digits", output_dir=str(tmp_path), epochs=0)
    assert len(history.load(tmp_path)) == 1


def test_failed_and_stopped_runs_are_recorded_with_their_status(tmp_path, monkeypatch):
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        run_app("digits", history=str(tmp_path), stop=stop, **TINY)

    def broken(config, verbose, comm, progress):
        raise RuntimeError("the disk caught fire\nsecond line")
    monkeypatch.setitem(APPS, "digits", dataclasses.replace(APPS["digits"], run=broken))
    with pytest.raises(RuntimeError, match="caught fire"):
        run_app("digits", history=str(tmp_path), **TINY)
    stopped, failed = history.load(tmp_path)
    assert stopped["status"] == "stopped" and stopped["error"].startswith("Stopped: ")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: the disk caught fire"
    assert failed["metrics"] == {} and failed["figures"] == {}


def test_a_history_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.warns(RuntimeWarning, match="could not record this run"):
        result = run_app("digits", history=str(tmp_path / "a-file" / "below"), **TINY)
    assert result.metrics["test_accuracy"] > 0


def _append_many(folder, worker, count, size):
    for i in range(count):
        history.record(folder, "digits", {"worker": worker, "i": i, "padding": "x" * size}, status="finished",
                       start=time.time(), seconds=0.0)


def test_concurrent_appends_from_several_processes_never_interleave(tmp_path):
    """Records of 100 kB (far past what one pipe write or one stdio buffer holds) from 4 processes at once."""
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w, 25, 100_000)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
        assert p.exitcode == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = history.load(tmp_path)
    assert len(records) == 100
    for w in range(4):
        assert [r["config"]["i"] for r in records if r["config"]["worker"] == w] == list(range(25))


def test_concurrent_appends_from_threads_of_one_process_never_interleave(tmp_path, monkeypatch):
    """POSIX record locks belong to the process: its threads must still take turns. Every write is cut short
    at 4 kB and yields the processor, so threads that did not take turns would interleave their records."""
    def short_write(fd, data):
        time.sleep(0)
        return os.write(fd, bytes(data[:4096]))
    monkeypatch.setattr(history, "os", types.SimpleNamespace(**{**vars(os), "write": short_write}))
    threads = [threading.Thread(target=_append_many, args=(str(tmp_path), w, 10, 100_000)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = history.load(tmp_path)
    assert sorted((r["config"]["worker"], r["config"]["i"]) for r in records) == [
        (w, i) for w in range(4) for i in range(10)]


@pytest.mark.skipif(history.fcntl is None, reason="POSIX record locks only")
def test_a_file_system_without_locks_gets_an_unlocked_append_and_a_warning(tmp_path, monkeypatch):
    import errno

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(history.fcntl, "lockf", no_locks)
    with pytest.warns(RuntimeWarning, match="without locks"):
        history.record(tmp_path, "digits", {"a": 1}, status="finished", start=time.time(), seconds=1.0)
    assert [r["config"] for r in history.load(tmp_path)] == [{"a": 1}]


def test_a_truncated_line_is_skipped_with_a_warning_and_the_next_record_starts_fresh(tmp_path):
    for precision in ("fp32", "bf16"):
        history.record(tmp_path, "digits", {"precision": precision}, status="finished", start=time.time(),
                       seconds=1.0)
    path = tmp_path / history.FILE
    text = path.read_bytes()
    path.write_bytes(text[:len(text) - 40])  # a writer killed in mid-line
    with pytest.warns(RuntimeWarning, match=r"history.jsonl, line 2: skipped"):
        records = history.load(tmp_path)
    assert [r["config"]["precision"] for r in records] == ["fp32"]
    history.record(tmp_path, "digits", {"precision": "fp16"}, status="failed", start=time.time(), seconds=1.0)
    with pytest.warns(RuntimeWarning, match="line 2: skipped"):
        records = history.load(tmp_path)
    assert [r["config"]["precision"] for r in records] == ["fp32", "fp16"]


def test_a_record_that_fills_the_disk_is_taken_back(tmp_path, monkeypatch):
    import errno
    history.record(tmp_path, "digits", {"precision": "fp32"}, status="finished", start=time.time(), seconds=1.0)
    size = (tmp_path / history.FILE).stat().st_size
    write = os.write

    def full(fd, data):  # half the line reaches the disk, then it is full
        write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        history.record(tmp_path, "digits", {"precision": "bf16"}, status="finished", start=time.time(), seconds=1.0)
    monkeypatch.undo()
    assert (tmp_path / history.FILE).stat().st_size == size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(history.load(tmp_path)) == 1


def test_compare_shows_only_the_settings_that_differ(runs):
    folder, _ = runs
    records = history.load(folder)
    assert history.differing(records) == ["precision", "optimizer", "output_dir"]
    assert history.compare(records).columns == history.compare(records, keys=["precision", "optimizer"]).columns
    table = history.compare(records, keys=["precision", "optimizer", "epochs"])
    assert table.columns == ["start", "app", "status", "seconds", "config.precision", "config.optimizer",
                             "config.strategy", "metrics.test_accuracy", "metrics.test_loss"]  # strategy: always
    assert "config.strategy" not in history.compare(records, always=()).columns  # the same in both runs
    assert [row["config.optimizer"] for row in table.dicts()] == ["adam", "sgd"]
    text = str(table).splitlines()
    assert len(text) == 3 and "precision" in text[0] and "bf16" in text[2] and "epochs" not in text[0]
    assert "<th>config.precision</th>" in table._repr_html_()
    chosen = history.table(folder, columns=["status", "precision", "metrics.test_accuracy"])
    assert chosen.rows == [["finished", "fp32", records[0]["metrics"]["test_accuracy"]],
                           ["finished", "bf16", records[1]["metrics"]["test_accuracy"]]]
    assert len(history.table(folder, app="climate_sr")) == 0
    with pytest.raises(TypeError, match="^columns: expected a list of names"):
        history.table(folder, columns="status")


def test_record_checks_its_arguments_and_writes_strict_json(tmp_path):
    with pytest.raises(ValueError, match="^status: "):
        history.record(tmp_path, "digits", {}, status="done", start=time.time(), seconds=1.0)
    with pytest.raises(TypeError, match="^config: expected a dict"):
        history.record(tmp_path, "digits", None, status="finished", start=time.time(), seconds=1.0)
    with pytest.raises(ValueError, match="^seconds: "):
        history.record(tmp_path, "digits", {}, status="finished", start=time.time(), seconds=-1)
    history.record(tmp_path, "climate_sr", {"ratio": 50}, status="finished", start=time.time(), seconds=1.0,
                   metrics={"l2_sz3": float("nan"), "improvement": float("inf")})
    line = (tmp_path / history.FILE).read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert history.load(tmp_path)[0]["metrics"] == {"l2_sz3": None, "improvement": None}


def test_history_view_lists_runs_newest_first_and_reloads_a_runs_figures(runs):
    pytest.importorskip("ipywidgets")
    from hpcai.ui.history_view import HistoryView
    folder, results = runs
    view = HistoryView(folder)
    records = history.load(folder)
    assert [r["id"] for r in view.shown()] == [records[1]["id"], records[0]["id"]]
    columns = int(view.table.layout.grid_template_columns.split("(")[1].split(",")[0])
    header = [cell.value for cell in view.table.children[:columns]]
    assert header == ["<b></b>", "<b>start</b>", "<b>app</b>", "<b>status</b>", "<b>seconds</b>", "<b>precision</b>",
                      "<b>optimizer</b>", "<b>strategy</b>", "<b>test_accuracy</b>", "<b>test_loss</b>"]  # output_dir differs, not shown
    assert len(view.table.children) == columns * 3
    first_row = [getattr(c, "value", None) for c in view.table.children[columns:2 * columns]]
    assert "bf16" in first_row and "sgd" in first_row
    button = view.table.children[columns * 2]  # the older run's row: fp32
    button.click()
    assert view.selected["id"] == records[0]["id"]
    images = [c for box in view.figures.children for c in getattr(box, "children", ()) for c in c.children
              if hasattr(c, "format")]
    with open(results[0].figures["loss"], "rb") as f:
        assert any(image.value == f.read() for image in images)
    assert len(images) == 2
    # a figure a later run wrote over is not passed off as this run's
    later = time.time() + 60
    os.utime(results[0].figures["loss"], (later, later))
    view.select(records[0]["id"])
    notes = [c.value for c in view.figures.children if hasattr(c, "value")]
    assert any("loss" in n and "rewritten after this run" in n for n in notes)
    with pytest.raises(ValueError, match="^run: expected the id"):
        view.select("no-such-run")
    view.app.value = "digits"
    assert "<b>app</b>" not in [getattr(c, "value", None) for c in view.table.children]
    run_app("digits", output_dir=str(folder / "third"), history=str(folder), **TINY)
    view.refresh()
    assert len(view.shown()) == 3

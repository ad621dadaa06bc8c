"""hpcai.tune on real engines: studies whose trials run side by side on 2-rank groups of 4 MPI engines.

A digits study of 8 trials on 4 engines in groups of 2 (each trial records the ranks of the sub-communicator it
ran on; known bad settings are pruned), resumed from its journal file after an interruption that left a trial
running; an engine killed under a trial fails that trial with the reason and the study goes on on fresh
engines; trials that raise fail alone. The four engines start once for the module; after the module no
process of theirs may be left. Bad input is named before anything starts. About 60 s on 2 cores.
"""
import os
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from tune_trials import one_rank_raises, sleepy

from hpcai.tune import Categorical, Float, Int, Tuner, parse_param, search_space
from hpcai.tune.study import open_study

TESTS = os.path.dirname(os.path.abspath(__file__))

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
GOOD = {"lr": 5e-3, "optimizer": "adam"}
BAD = {"lr": 1e-4, "optimizer": "sgd"}  # the loss hardly moves in 3 epochs


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Four engines for the module; after it, no process of theirs (restarted ones included) may be left."""
    for module in ("ipyparallel", "mpi4py", "psutil"):
        pytest.importorskip(module)
    if not os.access(MPIEXEC, os.X_OK) or os.environ.get("PMI_SIZE", "1") != "1":
        pytest.skip("needs an mpiexec beside this Python, outside any MPI launch")
    import procs
    yield from procs.engine_cluster(tmp_path_factory, 4, "ipp-tune")


def digits_tuner(storage, engines, **kw):
    return Tuner("digits", {"lr": (1e-4, 1e-1, "log"), "optimizer": ["adam", "sgd"]}, metric="test_accuracy",
                 fixed={"epochs": 3, "hidden": 32}, engines=engines, group=2, storage=storage, sampler="random",
                 seed=1, pruner=optuna.pruners.MedianPruner(n_startup_trials=1), **kw)


# -- on engines -------------------------------------------------------------------------------------------------
def test_a_digits_study_runs_on_2_rank_groups_prunes_and_resumes(engines, tmp_path):
    storage = tmp_path / "digits.journal"
    first = digits_tuner(storage, engines)
    for params in (GOOD, GOOD, BAD, BAD):
        first.enqueue(params)
    first.run(4)  # half the study, then "the kernel dies" with a trial running:
    orphan = open_study(storage, "digits", "maximize").ask({"lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)})
    kept = {t["number"]: (t["state"], t["value"]) for t in first.trials()}
    assert len(kept) == 4 and orphan.number == 4

    tuner = digits_tuner(storage, engines).run(8)
    trials = tuner.trials()
    assert {t["number"]: (t["state"], t["value"]) for t in trials[:4]} == kept  # finished trials kept
    assert trials[4]["state"] == "FAIL" and "interrupted" in trials[4]["error"]
    assert [t["retry_of"] for t in trials].count(4) == 1  # the orphan retried once, not counted
    ran = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(ran) >= 8 and tuner.counts()["counted"] == 8
    assert all(t["ranks"] in ([0, 1], [2, 3]) and t["group"] == t["ranks"][0] // 2 for t in ran)
    assert {t["group"] for t in ran} == {0, 1}  # side by side on both groups
    pruned = [t for t in ran if t["state"] == "PRUNED"]
    assert pruned and all(t["params"]["optimizer"] == "sgd" for t in pruned[:2] if t["number"] in (2, 3))
    assert all(t["intermediate"] and max(t["intermediate"]) < 100 for t in pruned)
    complete = [t for t in ran if t["state"] == "COMPLETE"]
    assert tuner.best_value == max(t["value"] for t in complete) > 0.85
    assert tuner.best_config().epochs == 3 and "pruned" in tuner.summary()


@pytest.mark.filterwarnings("ignore:Fixed parameter")  # the enqueued failing x lies outside the range searched
def test_a_killed_engine_fails_its_trial_and_the_study_goes_on_on_fresh_engines(engines, tmp_path):
    import psutil
    tuner = Tuner(sleepy, {"x": (0.0, 0.8)}, direction="minimize", engines=engines, group=2,
                  storage=tmp_path / "s.journal", pruner="none", sampler="random", seed=0, path=TESTS)
    tuner.enqueue({"x": 0.95})  # raises on both ranks of its group
    before = [info.pid for info in engines.ranks]
    tuner.start(6)
    deadline = time.monotonic() + 60
    while not any(t["group"] == 1 and t["state"] == "RUNNING" and t["intermediate"] for t in tuner.trials()):
        assert time.monotonic() < deadline and tuner.running, tuner.summary()
        time.sleep(0.05)
    psutil.Process(engines.ranks[3].pid).kill()
    tuner.wait(120)
    trials = {t["number"]: t for t in tuner.trials()}
    died = [t for t in trials.values() if t["state"] == "FAIL" and t["error"].startswith("the engine(s)")]
    assert len(died) == 1 and died[0]["group"] == 1 and "rank(s) [3]" in died[0]["error"], tuner.summary()
    victim = died[0]["number"]
    assert "retried" in trials[victim]["error"]
    others = [t for t in trials.values() if t["state"] == "FAIL" and t["number"] not in (0, victim)]
    assert all("interrupted on group 0" in t["error"] and t["group"] == 0 for t in others)  # the other group's
    retry = [t for t in trials.values() if t["retry_of"] == victim]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE" and retry[0]["params"] == trials[victim]["params"]
    assert tuner.restarted == 1 and not set(before) & {info.pid for info in engines.ranks}  # fresh engines
    raised = trials[0]
    assert raised["state"] == "FAIL" and "x too large" in raised["error"] and "rank" in raised["error"]
    assert not [t for t in trials.values() if t["retry_of"] == 0]  # its own error: not retried
    complete = [t for t in trials.values() if t["state"] == "COMPLETE"]
    assert tuner.counts()["counted"] == 6 and all(t["value"] == 2 * t["params"]["x"] for t in complete)


@pytest.mark.filterwarnings("ignore:Fixed parameter")
def test_a_rank_failing_alone_fails_its_trial_with_its_traceback(engines, tmp_path):
    tuner = Tuner(one_rank_raises, {"x": (0.0, 0.4)}, engines=engines, group=2, storage=tmp_path / "s.journal",
                  pruner="none", sampler="random", seed=0, path=TESTS)
    tuner.enqueue({"x": 0.9})
    tuner.run(4)
    trials = tuner.trials()
    assert trials[0]["state"] == "FAIL" and "only rank 1 fails" in trials[0]["error"]
    assert "retried" not in trials[0]["error"] and tuner.restarted == 1
    assert sum(t["state"] == "COMPLETE" for t in trials) >= 3


# -- in this process, and bad input ------------------------------------------------------------------------------
def counting(params, ctx):
    ctx.report(params["n"], 1)
    return params["n"] + (params["kind"] == "b")


def test_in_process_trials_and_a_function_search_space(tmp_path):
    tuner = Tuner(counting, {"n": (0, 3), "kind": ["a", "b"]}, direction="minimize", storage=tmp_path / "f.journal",
                  pruner="none", sampler="random", seed=3).run(5)
    trials = tuner.trials()
    assert [t["state"] for t in trials] == ["COMPLETE"] * 5 and all(t["ranks"] == [0] for t in trials)
    assert all(t["value"] == t["params"]["n"] + (t["params"]["kind"] == "b") for t in trials)
    assert all(isinstance(t["params"]["n"], int) for t in trials)
    assert tuner.best_value == min(t["value"] for t in trials)
    assert Tuner(counting, {"n": (0, 3), "kind": ["a", "b"]}, direction="minimize", storage=tmp_path / "f.journal",
                 pruner="none").run(5).counts()["counted"] == 5  # already done: nothing more runs


def test_space_from_config_fields():
    from hpcai.apps.digits import Config
    space = search_space({"lr": (1e-4, 1e-1, "log"), "optimizer": ["adam", "sgd"], "precision": None,
                          "hidden": (16, 128)}, Config)
    assert space["lr"] == Float(1e-4, 1e-1, True) and space["hidden"] == Int(16, 128)
    assert space["optimizer"] == Categorical(("adam", "sgd"))
    assert "mixed-bf16" in space["precision"].choices  # all the field's declared choices
    assert parse_param("lr=1e-4:1e-1:log") == ("lr", (1e-4, 0.1, "log"))
    assert parse_param("optimizer=adam,sgd") == ("optimizer", ["adam", "sgd"])
    assert parse_param("precision=*") == ("precision", None)


def test_ranges_narrow_the_bounds_a_field_declares(tmp_path):
    from hpcai.apps.digits import Config
    from hpcai.apps.fields import config_fields
    if not hasattr(config_fields(Config)[0], "check"):
        pytest.skip("this tree's Config fields declare no bounds")
    assert search_space({"hidden": None}, Config)["hidden"] == Int(1, 4096)  # the field's own bounds
    with pytest.raises(ValueError, match=r"hidden: expected an integer in \[1, 4096\], got 0"):
        Tuner("digits", {"hidden": (0, 64)}, metric="test_accuracy", storage=tmp_path / "s.journal")


@pytest.mark.parametrize("params, match", [
    ({"learning_rate": (1e-4, 1e-1)}, "learning_rate: not a field of hpcai.apps.digits.Config"),
    ({"lr": (0.1, 0.1)}, r"lr: expected a range with low < high, got \(0.1, 0.1\)"),
    ({"lr": (0.0, 0.1, "log")}, "lr: expected low > 0 on a log scale"),
    ({"optimizer": []}, r"optimizer: expected at least one choice, got \[\]"),
    ({"optimizer": ["adam", "adamw2"]}, "optimizer: expected choices among .* got 'adamw2'"),
    ({"hidden": (1.5, 8.0)}, r"hidden \(low\): expected an integer, got 1.5"),
    ({"model": (1, 2)}, "model: a range fits number fields only"),
    ({"lr": None}, r"lr: a number field needs a range"),
    ({"lr": "fast"}, "lr: expected a list of choices"),
])
def test_bad_search_spaces_are_named(params, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        Tuner("digits", params, metric="test_accuracy", storage=tmp_path / "s.journal")


@pytest.mark.parametrize("kwargs, match", [
    ({"engines": 4, "group": 8}, "group: expected at most 4 engines per group .* got 8"),
    ({"engines": 0, "group": 2}, "group: expected 1 engine per group when trials run in this process"),
    ({"pruner": "patient"}, "pruner: expected one of 'median', 'halving', 'hyperband', 'none', got 'patient'"),
    ({"sampler": "grid"}, "sampler: expected one of 'tpe', 'random', got 'grid'"),
    ({"direction": "up"}, "direction: expected one of 'minimize', 'maximize', got 'up'"),
    ({"metric": None}, "metric .*: expected a str, got NoneType"),
    ({"fixed": {"lr": 0.1}}, r"fixed: \['lr'\] are searched too"),
    ({"fixed": {"epochs": 0}}, "epochs: expected an integer .*got 0"),
])
def test_bad_arguments_are_named(kwargs, match, tmp_path):
    args = {"metric": "test_accuracy", "storage": tmp_path / "s.journal", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        Tuner("digits", {"lr": (1e-4, 1e-1, "log")}, **args)
    with pytest.raises(ValueError, match="objective .*: expected one of"):
        Tuner("nope", {"lr": (1e-4, 1e-1)}, metric="x", storage=tmp_path / "t.journal")


def test_invalid_combinations_fail_without_engines_and_the_study_goes_on(tmp_path):
    tuner = Tuner("digits", {"strategy": ["sync", "hogwild"]}, metric="test_accuracy", fixed={"epochs": 1},
                  storage=tmp_path / "s.journal", sampler="random", seed=0, pruner="none")
    tuner.enqueue({"strategy": "hogwild"})  # asynchronous needs sgd: the Config says so, no run needed
    tuner.enqueue({"strategy": "sync"})
    tuner.run(2)
    first = tuner.trials()[0]
    assert first["state"] == "FAIL" and "invalid parameters: optimizer" in first["error"]
    assert tuner.trials()[1]["state"] == "COMPLETE" and tuner.best_params == {"strategy": "sync"}


def test_the_live_view_shows_a_study(tmp_path):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("matplotlib")
    from hpcai.ui.tune_view import TuneView
    tuner = Tuner(counting, {"n": (0, 3), "kind": ["a", "b"]}, storage=tmp_path / "v.journal", pruner="none",
                  sampler="random", seed=0)
    view = TuneView(tuner)
    tuner.run(3)
    view.refresh()
    assert "3 complete" in view.header.value and view.table.value.count("<tr") == 4
    assert view.curves.value[:4] == b"\x89PNG"
    view.close()


def test_the_command_line_runs_and_resumes_a_study(tmp_path, capsys):
    import json

    from hpcai.cli import main
    args = ["tune", "digits", "--trials", "2", "--metric", "test_accuracy", "--param", "lr=1e-3:1e-2:log",
            "--param", "optimizer=adam,sgd", "--set", "epochs=1", "--pruner", "none", "--seed", "0",
            "--storage", str(tmp_path / "cli.journal")]
    assert main(args) == 0
    out = capsys.readouterr().out
    best = json.loads(out.strip().splitlines()[-1])
    assert best["counts"]["COMPLETE"] == 2 and 0 < best["best_value"] <= 1 and "#1" in out
    assert main(args[:3] + ["3"] + args[4:]) == 0  # one more, the first two kept
    out = capsys.readouterr().out
    assert "resuming" in out and json.loads(out.strip().splitlines()[-1])["counts"]["COMPLETE"] == 3
    for bad, match in ((["--param", "speed=1:2"], "speed: not a field"), (["--set", "epochs=0"], "epochs: expected"),
                       (["--param", "lr=1e-3:fast"], "lr: expected a number, got 'fast'")):
        with pytest.raises(SystemExit) as exit_:
            main(["tune", "digits", "--metric", "test_accuracy", "--storage", str(tmp_path / "x.journal"),
                  *(bad if bad[0] == "--param" else ["--param", "lr=1e-3:1e-2", *bad])])
        assert exit_.value.code == 2 and match in capsys.readouterr().err


def slow(params, ctx):
    time.sleep(0.05)
    return params["n"]


def test_stop_hands_out_no_more_trials_and_lets_the_running_one_finish(tmp_path):
    tuner = Tuner(slow, {"n": (0, 9)}, storage=tmp_path / "s.journal", pruner="none", sampler="random", seed=0)
    tuner.start(1000)
    deadline = time.monotonic() + 30
    while sum(t["state"] == "COMPLETE" for t in tuner.trials()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    tuner.stop()
    tuner.wait(30)
    states = [t["state"] for t in tuner.trials()]
    assert not tuner.running and 2 <= len(states) < 1000 and set(states) == {"COMPLETE"}


def ramp(params, ctx):
    """Ten reports of a value that ends at ``params["x"]`` (a bad x is bad from the start)."""
    for step in range(10, 101, 10):
        ctx.report(params["x"] * step / 100, step)
    return params["x"]


@pytest.mark.parametrize("pruner", ["median", "halving", "hyperband"])
def test_every_pruner_by_name_prunes_bad_trials(pruner, tmp_path):
    tuner = Tuner(ramp, {"x": (0.0, 1.0)}, direction="minimize", storage=tmp_path / "p.journal", pruner=pruner,
                  sampler="random", seed=0)
    for x in (0.1, 0.2, 0.3, 0.9, 0.95, 0.99):  # three good ones first, then three worse than all of them
        tuner.enqueue({"x": x})
    trials = tuner.run(12).trials()
    assert any(t["state"] == "PRUNED" and t["params"]["x"] > 0.5 for t in trials[3:6]), tuner.summary()
    assert all(t["state"] == "COMPLETE" for t in trials[:1]) and tuner.best_value <= 0.1

"""Workflows end to end: modules on their own ranks, channels, the tuple space, loops, failures, the CLI.

One-rank runs happen in this process; the MPI cases start ``mpiexec -n N python -m hpcai workflow run`` for
real (2, 3 and 4 ranks) with the modules of ``tests/workflow_modules.py``.
"""
import json
import os
import sys

import pytest

from hpcai import cli
from hpcai.parallel.comm import SerialCommunicator
from hpcai.workflow import ModuleFailed, SpecError, run_workflow

from mpijob import MPIEXEC, ROOT, mpirun

sys.path.insert(0, ROOT)  # the modules are named tests.workflow_modules:NAME, as under mpiexec from the root

needs_mpi = pytest.mark.skipif(
    not os.access(MPIEXEC, os.X_OK) or any(os.environ.get(v, "1") != "1" for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")),
    reason=f"needs an mpiexec next to {sys.executable} (and not to run under mpiexec already)")

M = "tests.workflow_modules:"
LOOP = {"workflow": {"name": "rounds"}, "tuple_space": {},
        "modules": {"count": {"entry": M + "counter", "params": {"rounds": 3}},
                    "drain": {"entry": M + "drain", "after": ["count"]}},
        "loop": {"modules": ["count"], "until": "count", "max_iterations": 10}}


def exchange(consumers: int) -> dict:
    return {"tuple_space": {},
            "modules": {"produce": {"entry": M + "producer", "params": {"consumers": consumers}},
                        "consume": {"entry": M + "consumer", "ranks": consumers, "params": {"producers": 1}}},
            "channels": [{"from": "produce", "to": "consume", "name": "data"}]}


def toml(spec: dict) -> str:
    """A control file's text for ``spec`` (the few TOML forms these tests need)."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)
    lines = []
    for table in ("workflow", "tuple_space", "loop"):
        if table in spec:
            lines += [f"[{table}]", *(f"{k} = {value(v)}" for k, v in spec[table].items())]
    for name, module in spec["modules"].items():
        lines += [f"[modules.{name}]", *(f"{k} = {value(v)}" for k, v in module.items())]
    for channel in spec.get("channels", ()):
        lines += ["[[channels]]", *(f"{k} = {value(v)}" for k, v in channel.items())]
    return "\n".join(lines) + "\n"


def run_mpi(n, spec, tmp_path, timeout=120):
    path = tmp_path / "control.toml"
    path.write_text(toml(spec))
    code, out, err, seconds = mpirun(n, ["-m", "hpcai", "workflow", "run", "--quiet", str(path)], timeout)
    return code, out, err, seconds


# -- one rank, in this process --------------------------------------------------------------------------------
def test_loop_runs_until_done_then_the_modules_after_it():
    result = run_workflow(LOOP, SerialCommunicator())
    assert result.iterations == 3
    assert result["count"] == {"iteration": 2, "done": True}
    assert result["drain"] == {"rounds": [0, 1, 2]}  # every round's tuple, taken once
    assert set(result.seconds) == {"count", "drain"}


def test_a_failing_module_is_named():
    spec = {"modules": {"boom": {"entry": M + "fail"}}}
    with pytest.raises(ModuleFailed, match="module 'boom' .*ValueError: this module fails on purpose"):
        run_workflow(spec, SerialCommunicator())


def test_no_tuple_space_is_said_plainly():
    spec = {"modules": {"count": {"entry": M + "counter", "params": {"rounds": 1}}}}
    with pytest.raises(ModuleFailed, match=r"no tuple space; add a \[tuple_space\] table"):
        run_workflow(spec, SerialCommunicator())


def test_an_application_is_a_module():
    spec = {"modules": {"train": {"app": "digits", "params": {"epochs": 1, "hidden": 16}}}}
    result = run_workflow(spec, SerialCommunicator(), verbose=0)
    assert 0.5 < result["train"]["metrics"]["test_accuracy"] <= 1.0


def test_too_few_ranks_and_bad_modules_are_refused():
    with pytest.raises(SpecError, match=r"needs 2 ranks .* but the job has 1"):
        run_workflow({"modules": {"a": {"entry": M + "fail", "ranks": 2}}}, SerialCommunicator())
    with pytest.raises(SpecError, match="modules.a.entry"):
        run_workflow({"modules": {"a": {"entry": "no-colon"}}}, SerialCommunicator())
    with pytest.raises(TypeError, match="comm: expected an hpcai Communicator"):
        run_workflow(LOOP, comm="world")


def test_cli_check_prints_the_plan_and_refuses_bad_files(tmp_path, capsys):
    path = tmp_path / "control.toml"
    path.write_text(toml(LOOP))
    assert cli.main(["workflow", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "repeat up to 10x until 'count'" in out and "['drain']" in out
    path.write_text(toml({"modules": {"a": {"entry": M + "counter", "ranks": 0}}}))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["workflow", "check", str(path)])
    assert exit_.value.code == 2
    assert "modules.a.ranks: expected a positive integer, got 0" in capsys.readouterr().err


# -- under mpiexec ---------------------------------------------------------------------------------------------
@needs_mpi
def test_same_results_on_one_rank_and_under_mpiexec(tmp_path):
    code, out, err, _ = run_mpi(2, LOOP, tmp_path)  # one worker and the tuple-space server
    assert code == 0, err[-3000:]
    here = run_workflow(LOOP, SerialCommunicator())
    assert json.loads(out)["values"] == here.values and json.loads(out)["iterations"] == here.iterations


@needs_mpi
@pytest.mark.parametrize("consumers", [1, 2])
def test_channels_move_every_dtype_bit_for_bit(tmp_path, consumers):
    code, out, err, _ = run_mpi(2 + consumers, exchange(consumers), tmp_path)
    assert code == 0, err[-3000:]
    values = json.loads(out)["values"]
    assert values["consume"] == {"mismatches": 0, "taken": [["from-producer/0", 0.0]], "ranks": consumers}
    assert values["produce"]["ranks"] == 1


@needs_mpi
def test_a_failing_module_ends_a_four_rank_workflow_quickly(tmp_path):
    spec = {"tuple_space": {},
            "modules": {"boom": {"entry": M + "fail"}, "wait": {"entry": M + "sleeper", "ranks": 2}},
            "channels": [{"from": "boom", "to": "wait", "name": "wait"}]}
    code, out, err, seconds = run_mpi(4, spec, tmp_path, timeout=60)
    assert code not in (0, None), f"exit {code}; {err[-2000:]}"
    assert seconds < 10, f"the workflow took {seconds:.1f} s to end"
    assert "module 'boom' (rank 0 of 1" in err and "this module fails on purpose" in err


@needs_mpi
def test_a_long_loop_frees_its_communicators(tmp_path):
    # every round splits the ranks anew; MPICH has about 2000 communicators per process, so they must be freed
    rounds = 2500
    spec = {**LOOP, "modules": {**LOOP["modules"], "count": {"entry": M + "counter", "params": {"rounds": rounds}}},
            "loop": {**LOOP["loop"], "max_iterations": rounds}}
    code, out, err, _ = run_mpi(3, spec, tmp_path, timeout=180)
    assert code == 0, err[-3000:]
    assert json.loads(out)["iterations"] == rounds and len(json.loads(out)["values"]["drain"]["rounds"]) == rounds


def test_stop_ends_an_in_process_workflow_at_its_next_progress_update():
    import threading

    from hpcai.apps import Stopped
    from hpcai.runner import run_workflow as run_here
    stop, seen = threading.Event(), []

    def progress(snaps):  # the first report asks to stop: the module's next update raises Stopped
        seen.extend(snaps)
        stop.set()
    with pytest.raises(Stopped):
        run_here(LOOP, progress=progress, stop=stop)
    assert seen and seen[0]["phase"] == "round 0"

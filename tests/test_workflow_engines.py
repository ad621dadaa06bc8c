"""One control file, three ways to run it: under ``mpiexec`` (``python -m hpcai workflow run``), on ipyparallel
MPI engines (``hpcai.runner.run_workflow(..., engines=...)``) and in this process -- the same values each way.

A module that raises on the engines ends the run within seconds with its name; ``stop`` interrupts a run;
no process of the engines is left behind (checked by PID and by a marker in the environment, which every
process started from here inherits). The modules are ``tests/workflow_modules.py``'s, found through
``path=`` (the repository root) on the engines and through the working directory under ``mpiexec``. About
45 s on 2 cores, most of it starting engines (three times).
"""
import importlib
import json
import os
import sys
import threading
import time
import uuid

import pytest

from hpcai.apps import Stopped
from hpcai.runner import ensure_running, run_workflow
from hpcai.workflow import ModuleFailed, SpecError

from mpijob import MPIEXEC, ROOT, mpirun

M = "tests.workflow_modules:"
MARKER = "HPCAI_WORKFLOW_ENGINES_TEST"

# a loop over the tuple space: `count` puts one tuple a round until it says done, `drain` takes them all after
LOOP = f"""
[workflow]
name = "rounds"

[tuple_space]
servers = 1

[modules.count]
entry = "{M}counter"
params = {{ rounds = 3 }}

[modules.drain]
entry = "{M}drain"
after = ["count"]

[loop]
modules = ["count"]
until = "count"
max_iterations = 10
"""

# every dtype and shape over a channel, and a tuple between the two: 3 ranks (2 modules + the space's server)
EXCHANGE = f"""
[tuple_space]
servers = 1

[modules.produce]
entry = "{M}producer"
params = {{ consumers = 1 }}

[modules.consume]
entry = "{M}consumer"
params = {{ producers = 1 }}

[[channels]]
from = "produce"
to = "consume"
name = "data"
"""

FAILING = f"""
[tuple_space]
servers = 1

[modules.boom]
entry = "{M}fail"

[modules.wait]
entry = "{M}sleeper"

[[channels]]
from = "boom"
to = "wait"
name = "wait"
"""


def _mpiexec_usable() -> bool:
    return os.access(MPIEXEC, os.X_OK) and all(os.environ.get(v, "1") == "1"
                                              for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))


def _engines_usable() -> bool:
    try:
        for name in ("ipyparallel", "mpi4py", "psutil"):
            importlib.import_module(name)
    except ImportError:
        return False
    return _mpiexec_usable()


needs_mpiexec = pytest.mark.skipif(not _mpiexec_usable(), reason=f"needs an mpiexec next to {sys.executable} "
                                                                  "(and not to run under mpiexec already)")
needs_engines = pytest.mark.skipif(not _engines_usable(), reason="needs ipyparallel, psutil, mpi4py and mpiexec")


def control(tmp_path, text, name="control.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def under_mpiexec(n, path):
    """``mpiexec -n n python -m hpcai workflow run path`` from the repository root: its result, as JSON."""
    code, out, err, _ = mpirun(n, ["-m", "hpcai", "workflow", "run", "--quiet", str(path)], timeout=120)
    assert code == 0, f"mpiexec exited with {code}:\n{err[-3000:]}"
    return json.loads(out)


def left_behind(token, before):
    """Processes started since ``before`` (descendants of this one) or carrying the test's marker, killed."""
    import procs
    return procs.collect(lambda: [p for pid, p in procs.descendants().items() if pid not in before]
                         + procs.with_env(MARKER, token))


@pytest.fixture
def marked(monkeypatch, tmp_path):
    """A marker every process started by the test inherits (ipyparallel's files go under tmp_path too)."""
    import procs
    token = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, token)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return token, procs.descendants()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Three engines shared by the tests below; after them, no process of theirs may be left."""
    if not _engines_usable():
        pytest.skip("needs ipyparallel, psutil, mpi4py and mpiexec")
    import procs
    yield from procs.engine_cluster(tmp_path_factory, 3, "ipp-workflow")


# -- the same values everywhere ---------------------------------------------------------------------------------
@needs_engines
def test_loop_with_a_tuple_space_gives_the_same_values_everywhere(tmp_path, marked):
    path = control(tmp_path, LOOP)
    seen, seen_on_engines = [], []
    here = run_workflow(path, path=ROOT, verbose=0, progress=seen.extend)
    assert here.iterations == 3 and here["drain"] == {"rounds": [0, 1, 2]}
    assert {"round 0", "round 2"} <= {snap.get("phase") for snap in seen}  # ctx.progress reached us
    mpi = under_mpiexec(2, path)  # one worker and the tuple-space server
    # relayed while the run goes on (this one may be over before the first look), one snapshot per rank
    on_engines = run_workflow(path, engines=2, path=ROOT, verbose=0, progress=seen_on_engines.append)
    assert all(len(snaps) == 2 for snaps in seen_on_engines)
    for other in (mpi, vars(on_engines)):
        assert other["values"] == here.values and other["iterations"] == here.iterations
        assert set(other["seconds"]) == {"count", "drain"}
    left = left_behind(*marked)
    assert not left, f"processes left after run_workflow(engines=2) (killed now): {left}"


@needs_mpiexec
def test_a_channel_between_two_modules_gives_the_same_values_under_mpiexec_and_on_engines(tmp_path, engines):
    path = control(tmp_path, EXCHANGE)
    expected = {"produce": {"sent": 42, "ranks": 1},
                "consume": {"mismatches": 0, "taken": [["from-producer/0", 0.0]], "ranks": 1}}
    assert under_mpiexec(3, path)["values"] == expected
    assert run_workflow(path, engines=engines, path=[ROOT], verbose=0).values == expected


def test_modules_on_path_are_imported_afresh_each_run(tmp_path, engines):
    module = tmp_path / "edited_module.py"
    spec = {"modules": {"m": {"entry": "edited_module:main"}}}
    for version in (1, 2):
        module.write_text(f"def main(ctx):\n    return {{'version': {version}, 'size': ctx.size}}\n")
        assert run_workflow(spec, path=tmp_path).values == {"m": {"version": version, "size": 1}}
        assert run_workflow(spec, engines=engines, path=tmp_path, verbose=0)["m"]["version"] == version
    assert str(tmp_path) not in sys.path and "edited_module" not in sys.modules
    with pytest.raises(ModuleFailed, match=r"module 'm' .*cannot import module 'edited_module'"):
        run_workflow(spec)  # without path= the module is not found, and the error says which module


def test_stop_interrupts_a_workflow_on_engines(engines):
    spec = {"tuple_space": {}, "modules": {"a": {"entry": M + "sleeper"}, "b": {"entry": M + "sleeper"}},
            "channels": [{"from": "a", "to": "b", "name": "wait"}]}  # both wait for a message that never comes
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(Stopped, match="the engines were interrupted"):
            run_workflow(spec, engines=engines, path=ROOT, verbose=0, stop=stop)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 15


def test_a_failing_module_on_engines_is_named_within_seconds(tmp_path, engines):
    """The last test on ``engines``: the failure ends their MPI job."""
    ensure_running(engines)  # a test before may have ended their job
    start = time.monotonic()
    with pytest.raises(ModuleFailed) as failed:
        run_workflow(control(tmp_path, FAILING), engines=engines, path=ROOT, verbose=0)
    seconds = time.monotonic() - start
    assert seconds < 15, f"the failure took {seconds:.1f} s to surface"
    message = str(failed.value)
    assert "module 'boom' (rank 0 of 1, job rank 0) failed: ValueError: this module fails on purpose" in message
    assert "control.toml" in message  # the file it came from
    assert type(failed.value.__cause__).__name__ == "EngineError" and not engines.running


# -- refused before anything starts --------------------------------------------------------------------------------
def test_bad_requests_are_refused_before_any_engine_starts(tmp_path):
    path = control(tmp_path, EXCHANGE)
    start = time.monotonic()
    with pytest.raises(SpecError, match=r"control.toml: needs 3 ranks .* but the job has 2"):
        run_workflow(path, engines=2)
    with pytest.raises(SpecError, match=r"needs 3 ranks .* but the job has 1"):
        run_workflow(path)  # in this process: one rank
    with pytest.raises(SpecError, match="travels to the engines as JSON"):
        run_workflow({"modules": {"a": {"entry": M + "drain", "params": {"when": object()}}}}, engines=1)
    with pytest.raises(ValueError, match="path: expected existing folders"):
        run_workflow(path, engines=3, path=tmp_path / "nowhere")
    with pytest.raises(TypeError, match="path: expected a folder"):
        run_workflow(path, engines=3, path=3)
    with pytest.raises(TypeError, match="progress: expected a function"):
        run_workflow(path, engines=3, progress=3)
    with pytest.raises(ValueError, match="engines"):
        run_workflow(path, engines=-1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        run_workflow(path, engines=3, stop=stop)
    assert time.monotonic() - start < 5

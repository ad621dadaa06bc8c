"""No process of a cluster outlives its client, and what ends a run says so in one line (issue 16).

Each test starts ``hpcai run digits --engines 2`` (or ``run_app(..., engines=2)`` in a Jupyter kernel) with a
marker in its environment, waits until the engines run, collects the PIDs of every process of the run
(client, controller and schedulers, the MPI launcher, engines, nannies, the guard), then ends the client the
way a user or a batch system does: SIGTERM, SIGKILL, Ctrl-C, a kernel restart. Nothing may be left 10 s
later (checked by PID and by the marker, which every process started from the client inherits); whatever is
left is killed and named. The SIGKILL run also checks that no process of the run listens outside loopback.
About 15 s per cluster on 2 busy cores.

Under ``mpiexec`` (about 8 s each): the README's data-parallel recipe with one rank raising ends within
seconds with that rank's traceback; a rank that stalls is named by a StallWarning while the waiting ranks
sleep instead of spinning, and a stall timeout ends the job naming it.
"""
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ipyparallel")
pytest.importorskip("mpi4py")

import procs  # noqa: E402
from hpcai.cluster import find_mpiexec  # noqa: E402

MARK = "HPCAI_TEST_HARDENING"
GONE_WITHIN = 10.0  # seconds after the client ended (the bound)
DIGITS = ["digits", "--engines", "2", "--epochs", "2000", "--hidden", "16"]  # runs far longer than the tests
pytestmark = [
    pytest.mark.skipif(not os.access(find_mpiexec(), os.X_OK), reason="no mpiexec in this environment"),
    pytest.mark.skipif(int(os.environ.get("PMI_SIZE", "1")) > 1, reason="already running under mpiexec"),
]


def _env(tmp_path, marker):
    return {**os.environ, MARK: marker, "IPYTHONDIR": str(tmp_path / "ipython"), "PYTHONUNBUFFERED": "1"}


def _marked(marker, but=()):
    return [p for p in procs.with_env(MARK, marker) if p.pid not in but]


def _wait_for_engines(marker, client, timeout=120.0) -> list:
    """Every process of the run once both engines and their nannies run (the run is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert procs.alive(client), "the client ended before its engines ran"
        found = _marked(marker)
        lines = [" ".join(p.cmdline()) for p in found if procs.alive(p)]
        if sum("ipyparallel.engine.nanny" in line for line in lines) >= 2:
            time.sleep(1.0)  # the function is running on the engines by now
            return _marked(marker)
        time.sleep(0.5)
    pytest.fail(f"the engines did not start within {timeout:g} s")


def _seconds_until_gone(marker, started, begin, but=()) -> float:
    """Seconds from ``begin`` (a time.monotonic()) until every process in ``started`` and every marked one
    (except ``but``) is gone; fails, naming and killing them, when some are still there GONE_WITHIN s after
    ``begin``."""

    def left():
        return procs.living(started) + [p for p in _marked(marker, but) if p.pid not in {q.pid for q in started}]
    while time.monotonic() - begin < GONE_WITHIN:
        if not left():
            return time.monotonic() - begin
        time.sleep(0.2)
    described = procs.collect(left, grace=0)
    pytest.fail(f"{len(described)} process(es) of the cluster outlived the client by {GONE_WITHIN:g} s "
                f"(killed now): {described}")


def _kinds(started) -> str:
    return " ".join(" ".join(p.cmdline()) for p in procs.living(started))


def _as_from_a_terminal():
    """SIGINT as a command typed in a terminal has it. A test suite started in the background by a shell
    without job control ignores SIGINT, and its children would inherit that (Ctrl-C would never arrive)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_client(tmp_path):
    """``hpcai run digits --engines 2`` with a fresh marker; its output goes to files (pipes would be held open
    by whatever inherits them)."""
    marker = uuid.uuid4().hex
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        client = subprocess.Popen([sys.executable, "-m", "hpcai", "run", *DIGITS], cwd=tmp_path,
                                  env=_env(tmp_path, marker), stdout=out, stderr=err,
                                  start_new_session=True,  # its own process group: the test's Ctrl-C hits only it
                                  preexec_fn=_as_from_a_terminal)
    return marker, client


def _listening_outside_loopback(started) -> list:
    found = []
    for p in procs.living(started):
        try:
            for c in p.net_connections("inet"):
                if c.status == psutil.CONN_LISTEN and not c.laddr.ip.startswith("127.") and c.laddr.ip != "::1":
                    found.append(f"{procs.describe(p)} listens on {c.laddr.ip}:{c.laddr.port}")
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL", "Ctrl-C"])
def test_no_process_outlives_hpcai_run(tmp_path, how):
    marker, client = _run_client(tmp_path)
    started = []
    try:
        started = _wait_for_engines(marker, client.pid)
        kinds = _kinds(started)
        assert "ipyparallel.controller" in kinds and "ipyparallel.engine" in kinds and "mpiexec" in kinds, kinds
        if how == "SIGKILL":  # a local run listens on loopback only: controller, launcher and ranks
            assert _listening_outside_loopback(started) == []
        sent = time.monotonic()
        if how == "Ctrl-C":
            os.killpg(client.pid, signal.SIGINT)  # what the terminal sends to the foreground process group
        else:
            client.send_signal(getattr(signal, how))
        client.wait(timeout=60)
        ended = time.monotonic()
        seconds = _seconds_until_gone(marker, started, ended)
        print(f"{how}: the client ended {ended - sent:.1f} s after the signal, every process of its cluster "
              f"{seconds:.1f} s later")
    finally:
        procs.collect(lambda: procs.living(started) + _marked(marker) + ([client.pid] if client.poll() is None else []),
                      grace=0)
    err = (tmp_path / "err").read_text()
    if how == "SIGTERM":
        assert client.returncode == 128 + signal.SIGTERM, err
        assert err.rstrip().splitlines()[-1] == "hpcai run digits: terminated (SIGTERM)" and "Traceback" not in err, err
    elif how == "Ctrl-C":
        assert client.returncode == 130, err
        assert err.rstrip().splitlines()[-1] == "hpcai run digits: interrupted (Ctrl-C)" and "Traceback" not in err, err


def test_no_process_outlives_a_restarted_kernel(tmp_path):
    """``run_app(..., engines=2)`` in a Jupyter kernel, then a restart: jupyter_client asks the kernel to shut
    down, and the kernel, busy in the cell, ends by SIGTERM or SIGKILL; its cluster must follow it."""
    jupyter_client = pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    marker = uuid.uuid4().hex
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.shutdown_wait_time = 4.0  # SIGTERM at 2 s, SIGKILL at 4 s
    km.start_kernel(env=_env(tmp_path, marker), cwd=str(tmp_path))
    kc, started, new_kernel = km.client(), [], []
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        kernel = psutil.Process(km.provisioner.process.pid)
        kc.execute("from hpcai.runner import run_app\n"
                   "run_app('digits', {'epochs': 2000, 'hidden': 16}, engines=2, verbose=0)\n")
        started = _wait_for_engines(marker, kernel)
        km.restart_kernel(now=False)
        ended = time.monotonic()
        assert not procs.alive(kernel)
        new_kernel = [km.provisioner.process.pid, *(c.pid for c in psutil.Process(km.provisioner.process.pid)
                                                     .children(recursive=True))]
        seconds = _seconds_until_gone(marker, started, ended, but=new_kernel)
        print(f"kernel restart: every process of the cluster gone {seconds:.1f} s after the old kernel ended")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        procs.collect(lambda: procs.living(started) + _marked(marker), grace=0)


# -- the README's data-parallel recipe: one rank raises ------------------------------------------------------
RECIPE = '''
import time
from hpcai import datasets, nn, optim
from hpcai import parallel as hvd
from hpcai.train import fit


class FailsOnRank2(nn.Module):
    """The model, except that its third forward pass on rank 2 raises (the others then wait in the allreduce)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        if hvd.rank() == 2 and self.calls == 3:
            print(f"raising at {time.time()!r}", flush=True)
            raise RuntimeError("rank 2 fails on purpose")
        return self.inner(x)


(x, y), _ = datasets.digits(flat=True)
model = FailsOnRank2(nn.Sequential(nn.Linear(64, 32, rng=0), nn.ReLU(), nn.Linear(32, 10, rng=1)))
# the README's recipe, as written there
hvd.init()
opt = hvd.DistributedOptimizer(optim.Adam(model.parameters(), lr=1e-3), compression="bf16")
hvd.broadcast_parameters(model)
fit(model, (x, y), "cross_entropy", opt, comm=hvd.world(), epochs=5, verbose=0)
'''


def _mpi_job(tmp_path, text, n, *args) -> tuple:
    """``text`` as a script under ``mpiexec -n n`` (90 s at most): returncode (None: timed out), stdout, stderr,
    and both for an assertion message."""
    from mpijob import mpirun
    script = tmp_path / "job.py"
    script.write_text(text)
    code, out, err, _ = mpirun(n, [script, *args], timeout=90)
    return code, out, err, f"\n--- stdout ---\n{out[-5000:]}\n--- stderr ---\n{err[-5000:]}"


def test_the_readme_recipe_ends_within_seconds_when_one_rank_raises(tmp_path):
    code, out, err, shown = _mpi_job(tmp_path, RECIPE, 4)
    ended = time.time()
    assert code is not None, "the job still ran after 90 s: the other ranks hang in the allreduce" + shown
    raised = float(out.split("raising at ")[1].split()[0])
    print(f"the job ended {ended - raised:.2f} s after rank 2 raised")
    assert code != 0 and ended - raised <= 5.0, shown
    assert "[hpcai rank 2/4]" in err and "RuntimeError: rank 2 fails on purpose" in err and "in forward" in err, shown


# -- stall detection: a rank that does not come to a collective ----------------------------------------------
STALL = '''
import sys, time
import numpy as np
from hpcai.parallel.comm import world
comm = world()
buf = np.ones(4)
comm.allreduce_(buf)  # every rank has started
if comm.rank == 1:
    time.sleep(float(sys.argv[1]))  # rank 1 stalls; the others wait for it in the next allreduce
cpu, wall = time.process_time(), time.perf_counter()
comm.allreduce_(buf)
print(f"rank {comm.rank} waited {time.perf_counter() - wall:.2f} s on {time.process_time() - cpu:.2f} s of CPU",
      flush=True)
'''


def _waits(out) -> dict:
    """{rank: (seconds waited, CPU seconds used meanwhile)} from the stall script's output, found anywhere in it:
    mpiexec forwards each rank's output as it comes, so two ranks' lines can be run together."""
    return {int(rank): (float(seconds), float(cpu)) for rank, seconds, cpu in
            re.findall(r"rank (\d+) waited ([\d.]+) s on ([\d.]+) s of CPU", out)}


def test_a_stalled_rank_is_named_and_the_waiting_ranks_do_not_spin(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCAI_STALL_WARNING", "1.5")
    code, out, err, shown = _mpi_job(tmp_path, STALL, 3, 6.0)
    assert code == 0, shown
    warned = [line for line in err.splitlines() if "StallWarning" in line]
    assert len(warned) == 1 and "rank 0: rank(s) [1] have not reached allreduce_" in warned[0], shown
    assert "rank(s) [0, 2] have waited" in warned[0], shown
    waits = _waits(out)
    for rank in (0, 2):  # a waiting rank sleeps between polls: a spinning one used about a core throughout
        assert rank in waits, f"rank {rank} reported no wait" + shown
        seconds, cpu = waits[rank]
        assert seconds > 3 and cpu < 0.25 * seconds, f"rank {rank} waited {seconds} s on {cpu} s of CPU" + shown


def test_a_stall_timeout_ends_the_job_naming_the_missing_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCAI_STALL_TIMEOUT", "2")
    code, out, err, shown = _mpi_job(tmp_path, STALL, 3, 120.0)
    assert code is not None and code != 0, "the stall timeout did not end the job" + shown
    assert "rank(s) [1] have not reached allreduce_" in err and "stall_timeout=2 s reached" in err, shown
